"""Rolling a release out partition group by group: the plan, the controller, the launcher seam;
and edge agents in rings chosen by the flag mechanism (:mod:`cloud.rollout.edge_rings`)."""
