"""The real-language safety world: its catalogue, written answers, datasets and the step that builds them."""
