"""The `kleinserve` command in this process, as the shell would see it."""

from kleinserve.cli import main


def run(args, capsys):
    """main() as the shell would see it: exit code, stdout, stderr (argparse errors exit via SystemExit)."""
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err
