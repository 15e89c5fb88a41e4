"""`edgesd serve`: the loaded models behind AUTOMATIC1111's web UI API on a local port (the `serve` extra:
FastAPI and uvicorn). The runtime without the extra is unchanged; `edgesd serve` then says what to install."""

import importlib.util

from edgesd.errors import EdgesdError


def require_serve_extra() -> None:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise EdgesdError(f"edgesd serve needs the serve extra ({', '.join(missing)} missing): pip install 'edgesd[serve]'")


def run(served, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve until SIGINT/SIGTERM; a running job is cancelled first (uvicorn would wait for it)."""
    import uvicorn

    from edgesd.serve.app import create_app

    app = create_app(served)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.worker.close()
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
