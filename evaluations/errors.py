"""The one exception type the evaluator reports to users as a one-line error (exit code 2)."""


class EvaluatorError(Exception):
    """Bad input or an unusable Inception file; the message is shown to the user as is."""
