"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UsageError(ValueError):
    """Bad input from the user (a value, a path, a name); the message names it and what is valid."""


class TrainingDivergedError(RuntimeError):
    """A loss or gradient became NaN/inf; the model (policy, control variate, their optimizers
    and statistics) was left as it was before the update."""
