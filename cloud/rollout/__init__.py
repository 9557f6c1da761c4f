"""Rollouts: releases replacing the running ones step by step, judged by their health
(:mod:`cloud.rollout.edge_rings`: edge agents in rings chosen by the flag mechanism)."""
