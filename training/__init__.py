"""Training UMCI on cached frozen features: the loop, its losses, and the command line."""
