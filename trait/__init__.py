"""TRAIT: task-oriented in-domain data augmentation for continual pre-training."""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem the user can fix (bad config, bad input, conflicting output); the CLI prints it without a trace."""
