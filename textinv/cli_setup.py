"""What the command line sets up around a command: other libraries kept quiet unless asked (-v), a kill taken as
Ctrl-C, and one process printing under `accelerate launch`. The library itself never touches another library's
global logging; only the commands do, here."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator


def is_main_process() -> bool:
    """False in the second and later processes of `accelerate launch` (torchrun sets RANK for each): they train,
    but only the first one prints results."""
    return os.environ.get("RANK", "0") in ("", "0")


def quiet_libraries(verbose: bool) -> None:
    """diffusers, transformers and huggingface_hub print loading bars, deprecation notices and advice of their own;
    textinv says what it loads in its own words, so they are kept to errors unless `verbose` (-v, --debug). Called
    by the commands that load a model, just before they do: importing diffusers costs seconds."""
    if verbose:
        return
    import diffusers
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()  # huggingface_hub's bars while a model downloads; `fetch` draws its own
    # diffusers 0.42 renamed torch_dtype to dtype; torch_dtype works in every version we support (>= 0.30)
    warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A kill (SIGTERM) or a closed terminal (SIGHUP) ends the command as Ctrl-C does: cleanup runs, finished
    files stay, the same message, exit 130."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    kinds = [signal.SIGTERM]
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup keeps it ignored
        kinds.append(signal.SIGHUP)  # (and Windows has none)
    try:
        previous = {kind: signal.signal(kind, interrupt) for kind in kinds}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler)
