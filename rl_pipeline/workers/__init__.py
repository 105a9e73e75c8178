"""Ray actors: one file each (trainer, rollout, reference, reward) plus the actor group."""
