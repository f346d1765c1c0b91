"""The launchers' entry: `cli.run(main)` instead of `absl.app.run(main)`.

It applies se_jax/io/runtime.py first (persistent compilation cache, a quiet console unless
`--library_logs`).

Known user errors (a bad flag or config field, a bad input file, a missing path, a
malformed checkpoint, a busy output directory) print one line, `error: <message>`, and
exit with status 2; `--verbose` shows the traceback instead. Anything else is a bug and
keeps its traceback.

SIGTERM (preemption, a scheduler's stop) makes the run stop at its next step or shard
boundary, saved, with one line `preempted: stopped after <where> ...; resume: <command>`
and exit status 75 (se_jax/parallel/preemption.py). Each launcher installs the handler as
its first statement (se_jax/parallel/stop_signal.py); once the outcome is decided,
SIGTERM is ignored while the process exits. A lost peer process of a multi-process
run: `error: process <i> ... did not reach ...`, exit status 76.
"""
from __future__ import annotations

import os
import pickle
import re
import shlex
import sys
from typing import Any, Callable, Mapping, NoReturn, Sequence

from absl import app, flags
from se_jax.config.schema import RunConfig
from se_jax.io import runtime
from se_jax.parallel import distributed
from se_jax.parallel import preemption, stop_signal
from se_jax.io.stage_io import WriterLockError

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = preemption.EXIT_PREEMPTED     # 75: stopped and saved; rerun to resume
EXIT_PEER_LOST = preemption.EXIT_PEER_LOST     # 76: another process of the run is gone
MAX_MESSAGE = 600   # characters of the one-line message

# Errors a user can cause and fix: ValueError covers ConfigError, DatasetError,
# UnicodeDecodeError, JSON errors and the checkpoint readers' errors; OSError covers
# FileNotFoundError, PermissionError and a full disk.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, OSError, pickle.UnpicklingError, app.UsageError, WriterLockError)


def resume_command() -> str:
    """The command line that resumes this run (the same command)."""
    return shlex.join([os.path.basename(sys.executable), *sys.argv])


def one_line(message: str) -> str:
    """A message on one line (whitespace collapsed), at most MAX_MESSAGE characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


def describe(error: BaseException) -> str:
    """The one-line text of a user error (file:line for a UnicodeDecodeError's bytes)."""
    if isinstance(error, UnicodeDecodeError):
        return one_line(f"not valid UTF-8 ({error.reason} at byte {error.start}); "
                        f"re-encode the file as UTF-8")
    if isinstance(error, (FileNotFoundError, PermissionError)) and error.filename \
            and str(error.filename) not in str(error.strerror or ""):
        return one_line(f"{error.filename}: {error.strerror}")
    text = str(error)
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    return one_line(text or type(error).__name__)


def fail(message: str) -> NoReturn:
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def _verbose(argv: Sequence[str]) -> bool:
    return any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1")
               for a in argv)


def config_field_error(error: BaseException, argv: Sequence[str]) -> str:
    """'--config.a.b=..: no config field 'b' (did you mean ...)' for a config-flag typo."""
    text = str(error.args[0] if error.args else error).replace("\\n", " ").replace("\\'", "'")
    text = one_line(text.strip("'\""))
    key = re.match(r"'?([\w-]+)'?", text)
    flag = next((a.split("=")[0] for a in argv
                 if a.startswith("--config.") and key
                 and re.search(rf"\.{re.escape(key.group(1))}(=|$)", a.split("=")[0] + "=")),
                None)
    hint = re.search(r"[Dd]id you mean \"?([\w.-]+)\"?", text)
    where = flag or "a --config flag"
    return (f"{where}: unknown config field {key.group(1)!r}" if key else where) + (
        f"; did you mean {hint.group(1)!r}?" if hint else f" ({text})")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every parse failure as one line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        if _verbose(argv):
            raise
        fail(f"{e}")
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
        # ml_collections applies --config.x.y=... overrides while parsing; a typo in a
        # field name surfaces here as AttributeError/KeyError with a "Did you mean".
        if _verbose(argv):
            raise
        if isinstance(e, (AttributeError, KeyError)):
            fail(config_field_error(e, argv))
        fail(describe(e))


def _named_lost_peer(main: Callable[[list[str]], Any], argv: list[str]) -> Any:
    """main(argv); an error of a multi-process run caused by a lost peer process (a
    collective's connection reset, say) becomes one line naming it, exit status 76."""
    try:
        return main(argv)
    except Exception as e:
        peer = preemption.lost_peer(e) if preemption.peer_error(e) else None
        if peer is None:
            raise
        print(f"error: {one_line(str(peer))}", file=sys.stderr, flush=True)
        # Not sys.exit: jax.distributed's exit handler would wait for the lost peer.
        os._exit(EXIT_PEER_LOST)


def run(main: Callable[[list[str]], Any]) -> None:
    """absl.app.run(main) with one-line errors for USER_ERRORS (exit 2) unless --verbose."""
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, "show the traceback of an error")
    if "library_logs" not in flags.FLAGS:
        flags.DEFINE_bool("library_logs", False, "keep the INFO lines of Orbax, TFDS and "
                          "other libraries on the console")

    def guarded(argv: list[str]) -> Any:
        runtime.setup(library_logs=flags.FLAGS.library_logs)
        stop_signal.install()   # the launcher did already; kept for callers that did not
        try:
            result = _named_lost_peer(main, argv)
            # Multi-process: leave together; JAX's shutdown barrier at exit waits only
            # min(SE_JAX_PEER_TIMEOUT, 60) s for the others, then aborts this process.
            distributed.barrier("exit", stop_aware=False)
            return result
        except preemption.Preempted as e:
            print(one_line(f"preempted ({e.reason}): stopped after {e.where}; everything up "
                           f"to there is saved; resume: {resume_command()}"),
                  file=sys.stderr, flush=True)
            sys.exit(EXIT_PREEMPTED)
        except preemption.PeerLostError as e:
            print(f"error: {one_line(str(e))}", file=sys.stderr, flush=True)
            # Not sys.exit: jax.distributed's exit handler would wait for the lost peer.
            os._exit(EXIT_PEER_LOST)
        except USER_ERRORS as e:
            if flags.FLAGS.verbose:
                raise
            fail(describe(e))
        except KeyboardInterrupt:
            if flags.FLAGS.verbose:
                raise
            print("error: interrupted", file=sys.stderr, flush=True)
            sys.exit(130)
        finally:   # decided: a late SIGTERM must not turn this exit into a death by signal
            stop_signal.finished()

    app.run(guarded, flags_parser=parse_flags)


def stage_config(config: Any, overrides: Mapping[str, str | None] | None = None) -> RunConfig:
    """The typed config a stand-alone stage launcher runs, from its ConfigDict with the
    launcher's path flags applied (`"section.field" -> value`; None = flag not given):
    checked before JAX starts (a bad field fails in a second), then the multi-process start
    (a no-op on one host)."""
    changes: dict[str, dict[str, str]] = {}
    for key, value in (overrides or {}).items():
        if value is not None:
            section, field = key.split(".")
            changes.setdefault(section, {})[field] = value
    typed = RunConfig.from_configdict(config).replace(**changes)
    distributed.initialize()  # multi-process start on a pod slice (no-op otherwise)
    return typed
