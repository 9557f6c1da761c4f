#!/bin/sh
# Make /etc/redis/users.acl from the packaged template: a random password per user, kept
# in /etc/vpp/secrets/redis-<user> (root:vpp 0640; the operator's root:root 0600), and only
# its SHA-256 in the ACL file. Existing password files are kept (run it again after an
# upgrade of the template). Usage: make-users-acl.sh [template] [acl-file] [secrets-dir]
set -eu
template=${1:-/usr/share/vpp/redis/users.acl}
acl=${2:-/etc/redis/users.acl}
secrets=${3:-/etc/vpp/secrets}
umask 077
mkdir -p "$secrets"
out=$(mktemp)
cp "$template" "$out"
for user in vpp-worker vpp-dispatcher vpp-api vpp-operator; do
    file="$secrets/redis-$user"
    [ -s "$file" ] || head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > "$file"
    if [ "$user" != vpp-operator ] && getent group vpp >/dev/null; then
        chgrp vpp "$file" && chmod 0640 "$file"
    fi
    hash=$(tr -d '\n' < "$file" | sha256sum | cut -d' ' -f1)
    sed -i "s/@SHA256:$user@/$hash/" "$out"
done
install -m 0640 -o redis -g redis "$out" "$acl" 2>/dev/null || install -m 0640 "$out" "$acl"
rm -f "$out"
echo "wrote $acl; passwords in $secrets/redis-*"
