"""The labeling job: shard planning (plan), one shard on one worker without Ray (worker), Ray at the edge (driver)."""
