"""``arvision serve``: the HTTP API and web page (:mod:`arvision.serving`) over a text-to-image model (HART or
VILA-U) and a VILA-U question-answering model (the embedded defaults unless folders are given)."""

from __future__ import annotations

import argparse
import importlib.util
import socket
from pathlib import Path

from arvision.cli import at_least
from arvision.cli.common import add_device_arguments, silence_library_progress, torch_dtype
from arvision.defaults import default_model_path
from arvision.errors import ArvisionError, InputError

SERVE_MODULES = ("fastapi", "uvicorn", "python_multipart")  # the serve extra (python-multipart reads uploads)


def port_number(text: str) -> int:
    port = at_least(1)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {port}")
    return port


def check_port(host: str, port: int) -> None:
    """Bind every address of ``host:port`` as the server will (asyncio's ``create_server``: SO_REUSEADDR, so a
    port left in TIME_WAIT counts as free, and IPV6_V6ONLY) and let them go: a port in use or an address this
    machine lacks is named before the models load, not by uvicorn after."""
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:  # as asyncio binds it: IPv6 only, beside any IPv4 listener
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
    except OSError as exc:
        raise InputError(f"cannot listen on --host {host} --port {port}: {exc.strerror or exc}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve an HTTP API and web page (generate images, answer questions)")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="HART or VILA-U folder for /v1/generate (default: the embedded HART); a VILA-U one also answers "
        "/v1/describe unless --describe-model is given",
    )
    p.add_argument(
        "--describe-model", type=Path, default=None, help="VILA-U folder for /v1/describe (default: the embedded one)"
    )
    p.add_argument("--no-generate", action="store_true", help="serve no text-to-image model")
    p.add_argument("--no-describe", action="store_true", help="serve no question-answering model")
    p.add_argument("--text-encoder", type=Path, default=None, help="Qwen2 text-encoder folder (official HART)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default 8000)")
    p.add_argument(
        "--max-batch", type=at_least(1), default=8, help="images, videos or questions run together (default 8)"
    )
    p.add_argument(
        "--batch-wait-ms", type=at_least(0), default=20, help="how long to wait for requests to batch (default 20)"
    )
    p.add_argument("--max-pending", type=at_least(1), default=64, help="queued requests before 503 (default 64)")
    p.add_argument(
        "--max-upload-mb", type=at_least(1), default=64, help="largest request body, uploads included (default 64)"
    )
    add_device_arguments(p, None, "weights dtype (default: float32 for HART, the stored dtype for VILA-U)")
    p.set_defaults(func=run)


def build_app(args: argparse.Namespace):
    """Check that the address can be listened on, load the models the arguments name and wrap them in the app
    (without serving it)."""
    missing = [name for name in SERVE_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        hint = "pip install 'arvision[serve]'"
        raise ArvisionError(f"arvision serve needs the serve extra ({', '.join(missing)} missing): {hint}")
    from arvision.pipelines.hart import HartPipeline
    from arvision.pipelines.vila_u import VilaUPipeline, is_vila_u_folder
    from arvision.serving.app import create_app

    if args.no_generate and args.no_describe:
        raise InputError("--no-generate and --no-describe leave nothing to serve")
    for off, flag, value in (
        ("--no-generate", "--model", args.model),
        ("--no-generate", "--text-encoder", args.text_encoder),
        ("--no-describe", "--describe-model", args.describe_model),
    ):
        if value is not None and getattr(args, off[2:].replace("-", "_")):
            raise InputError(f"{flag} has nothing to do with {off}")
    check_port(args.host, args.port)
    silence_library_progress()
    generator = describer = None
    names = {}
    if not args.no_generate:
        folder = args.model or default_model_path("hart")
        if is_vila_u_folder(folder):
            if args.text_encoder is not None:
                raise InputError(f"--text-encoder applies to HART models only; {folder} is a VILA-U model")
            generator = VilaUPipeline.from_pretrained(folder, device=args.device, dtype=torch_dtype(args.dtype))
            generator.progress = False
        else:
            generator = HartPipeline.from_pretrained(
                folder,
                text_encoder=args.text_encoder,
                torch_dtype=torch_dtype(args.dtype or "float32"),
                device=args.device,
            )
        names["generate"] = str(folder)
    if not args.no_describe:
        if isinstance(generator, VilaUPipeline) and args.describe_model is None:
            describer = generator  # one VILA-U answers questions and generates: loaded once
            names["describe"] = names["generate"]
        else:
            folder = args.describe_model or default_model_path("vila-u")
            describer = VilaUPipeline.from_pretrained(folder, device=args.device, dtype=torch_dtype(args.dtype))
            describer.progress = False
            names["describe"] = str(folder)
    return create_app(
        generator,
        describer,
        names=names,
        max_batch=args.max_batch,
        max_wait_s=args.batch_wait_ms / 1000,
        max_pending=args.max_pending,
        max_upload_bytes=args.max_upload_mb * 2**20,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    app = build_app(args)
    print(f"serving on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
