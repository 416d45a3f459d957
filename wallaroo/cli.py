"""Entry points: ``wallaroo-run`` (run an application) and ``wallaroo`` (send, receive, cluster)."""
import click


@click.group()
def main():
    """wallaroo: tools around the stream-processing engine.

    Example::

        wallaroo receive --listen 127.0.0.1:7002 --expect 10
        wallaroo send --host 127.0.0.1:7010 --file words.txt
        wallaroo cluster status --external 127.0.0.1:5050
        wallaroo top --metrics 127.0.0.1:5001
    """


def _mount_tools():
    from wallaroo.tools.cluster import cluster
    from wallaroo.tools.receive import receive
    from wallaroo.tools.send import send
    from wallaroo.tools.top import top

    main.add_command(send)
    main.add_command(receive)
    main.add_command(cluster)
    main.add_command(top)


_mount_tools()


def run_main(argv=None):
    """The ``wallaroo-run`` command (see wallaroo.runtime.launcher)."""
    from wallaroo.runtime.launcher import main as launch

    raise SystemExit(launch(argv))
