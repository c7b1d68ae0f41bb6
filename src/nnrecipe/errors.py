"""One exception type for mistakes a user can fix: train.py prints its message, no traceback."""


class UserError(Exception):
    """Bad input (config, data, checkpoint): the message says what is wrong and how to fix it."""


def report_error(error: UserError, log) -> None:
    """An entry point's one error line: into its log file, and on stderr without a traceback."""
    import sys

    log.error("%s", error)
    print(f"\nnnrecipe: error: {error}", file=sys.stderr)


def instantiate(cfg, what: str, **kwargs):
    """hydra.utils.instantiate that lets a UserError through as it is (Hydra wraps everything
    in InstantiationException) and names the config group when something else goes wrong."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate
    from omegaconf.errors import MissingMandatoryValue

    try:
        return hydra_instantiate(cfg, **kwargs, _convert_="all")
    except MissingMandatoryValue as e:
        raise UserError(f"{what}.{e.key} must be set ({what}.{e.key}=...)") from None
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise UserError(
            f"could not build {what} ({cfg.get('_target_')}): {e.__cause__ or e}"
        ) from e
