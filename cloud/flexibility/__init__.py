"""The pool flexibility model (now, for how long, ahead), explicit and named in the API."""
