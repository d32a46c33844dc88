"""For the Ctrl-C tests: start a child with SIGINT as a shell gives it (default action, not
blocked), whatever the test process's own state. A thread of some library in the long test
session may leave SIGINT blocked or ignored in pytest's process; a child inherits both across
exec, and its Ctrl-C would then never arrive (seen only in whole-suite runs)."""
import signal


def default_sigint() -> None:  # a preexec_fn: runs in the child between fork and exec
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)
