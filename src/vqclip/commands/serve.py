"""`vqclip serve`: the web interface — a form, a queue with live previews, the gallery — on a local server."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, List, Optional

import typer

from vqclip.commands.common import handle_errors


@handle_errors
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback (127.0.0.1, "
                                                         "localhost, ::1) requires the access token."),
    port: int = typer.Option(8501, "--port", "-p", min=1, max=65535, help="Port to listen on."),
    output_dir: Path = typer.Option(Path("output"), "--output-dir", "--output", "-o",
                                    help="Where run folders go (and the queue is kept)."),
    token: Optional[str] = typer.Option(None, "--token", metavar="TOKEN",
                                        help="Access token (default: made up and printed when --host is not "
                                             "loopback; none on loopback unless given)."),
    device: Optional[List[str]] = typer.Option(None, "--device", metavar="DEVICE",
                                               help="A worker per device (repeatable), e.g. --device cuda:0 "
                                                    "--device cuda:1 (default: auto)."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir",
                                               help="Weights folder (default $VQCLIP_HOME or the user cache)."),
    no_download: bool = typer.Option(False, "--no-download", help="Never download weights; a job fails instead."),
) -> None:
    """Start the web interface: make, watch, stop, continue and browse runs from the browser, offline.

    Prints the URL and opens nothing else. Ctrl-C (or SIGTERM) stops it: a running job finishes its step and is
    saved as an interrupted run; queued jobs are kept and offered again at the next start.

    Example:

        vqclip serve --port 8501 --output-dir output
    """
    from vqclip.commands.common import STOP_REPORTED, err_console, out_console, safe
    from vqclip.errors import UsageError, VqclipError

    try:
        import uvicorn

        from vqclip.serve.app import Settings, create_app
    except ImportError as e:
        raise VqclipError(f"the web interface needs {e.name or 'starlette and uvicorn'}: "
                          "pip install 'vqclip[serve]'") from None
    from vqclip.runs import check_output_dir

    if token is not None and (len(token) < 8 or not token.isascii() or not token.isprintable() or " " in token):
        raise UsageError("--token: give at least 8 printable ASCII characters without spaces")
    devices = [d.strip().lower() for d in device or ["auto"]]
    from vqclip.config import RunConfig

    for d in devices:  # the same check RunConfig makes of --device
        try:
            RunConfig.model_validate({"prompt": "x", "device": d})
        except Exception:
            raise UsageError(f"--device {d!r}: use auto, cpu, cuda, cuda:N or mps") from None
    output_dir = check_output_dir(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VqclipError(f"cannot create {output_dir} ({e.strerror}); pass --output-dir a writable folder") from None
    sock = _bind(host, port)
    settings = Settings(output_dir=output_dir, host=host, port=port, token=token, weights_dir=weights_dir,
                        download=not no_download, devices=devices)
    app = create_app(settings)
    server_state = app.state.server
    stops: list[int] = []

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            stops.append(sig)
            if len(stops) == 1:
                err_console.print("\n[yellow]Stopping: a running job finishes its step and is saved; queued jobs are "
                                  "kept for the next start… (Ctrl-C again quits without saving it)[/]")
                server_state.begin_stop()
            else:
                server_state.jobs.abandon = True
            super().handle_exit(signal.SIGINT if len(stops) > 1 else sig, frame)

        def capture_signals(self) -> Any:  # uvicorn re-raises the signal afterwards; here the exit code says it
            import contextlib

            @contextlib.contextmanager
            def handlers() -> Any:
                previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for s, h in previous.items():
                        signal.signal(s, h)

            return handlers()

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                            lifespan="on")
    server = Server(config)
    guard = server_state.guard
    out_console.print(f"vqclip serve: {guard.url()}", markup=False, highlight=False)
    if guard.token and token is None:
        err_console.print("• listening beyond loopback: the URL above carries the access token; share it only "
                          "with people who may use this machine", markup=False)
    err_console.print(f"• runs go to {safe(output_dir)}; Ctrl-C stops", markup=False)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if stops:
        code = 143 if stops[0] == signal.SIGTERM else 130
        err_console.print("Terminated." if code == 143 else "Stopped.", markup=False)
        STOP_REPORTED.append(code)
        raise typer.Exit(code)


def _bind(host: str, port: int) -> Any:
    """The listening socket, bound now so that a port in use is one line, not a server log."""
    import socket

    from vqclip.errors import VqclipError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise VqclipError(f"--host {host!r}: not an address of this machine ({e.strerror}); use 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        why = "is in use" if e.errno in (98, 48, 10048) else f"cannot be used ({e.strerror})"
        raise VqclipError(f"port {port} on {host} {why}; pass another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
