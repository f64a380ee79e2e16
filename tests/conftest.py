"""Shared helpers: run a console-script main in-process and capture its one-line errors."""
import pytest
import torch


def run_cli(main, argv, capsys):
    """Call a console-script main; return (exit code, stdout, stderr)."""
    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli(capsys):
    return lambda main, argv: run_cli(main, argv, capsys)


@pytest.fixture
def one_thread():
    """Tiny models: per-op thread hand-offs cost more than they save, so run single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
