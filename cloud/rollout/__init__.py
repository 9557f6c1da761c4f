"""Rolling a release out partition by partition: analysis, config, observation, control."""
