"""The one error hierarchy of ossgym. Messages say what was wrong and what to do about it."""


class OssGymError(Exception):
    """Base class of every error ossgym raises on purpose."""


class ConfigError(OssGymError, ValueError):
    """A configuration value is wrong; the message names the field and the fix."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}. {fix}")


class SandboxError(OssGymError):
    """The sandbox itself failed (not the untrusted code: that gives a typed result, never this)."""


class ModelError(OssGymError):
    """A model could not be loaded or run as asked."""


class TokenizerError(OssGymError):
    """The offline gpt-oss tokenizer could not be built or verified."""
