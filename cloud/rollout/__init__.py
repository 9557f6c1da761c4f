"""Rolling a release out partition group by group: the plan, the controller, the launcher seam."""
