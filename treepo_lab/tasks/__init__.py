"""Tasks: where prompts come from and how responses are scored (see `base.Task`)."""
