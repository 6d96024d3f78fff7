"""``covidcxr dicom-node``: the pipeline behind a DICOM port, until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .common import UserError, writable_out
from .inference import check_dicom_extra


def cmd_dicom_node(args: argparse.Namespace) -> int:
    check_dicom_extra("covidcxr dicom-node")
    from ..dicom.node import Destination, DicomNode
    from ..infer import Predictor

    forward = Destination.parse(args.forward) if args.forward else None
    if not 0 <= args.port < 65536:
        raise UserError(f"--port must be from 0 to 65535, got {args.port}")
    if args.max_queue < 1:
        raise UserError(f"--max-queue must be at least 1, got {args.max_queue}")
    if not 0 < len(args.ae_title) <= 16:
        raise UserError(f"--ae-title {args.ae_title!r} must have 1 to 16 characters")
    out = writable_out(args.out) if args.out else None
    logging.getLogger("covidcxr.dicom").setLevel(logging.INFO)  # a server's log: each object received and read
    predictor = Predictor.load(use_gate=not args.no_gate, saliency=True, backend=args.backend, onnx_dir=args.onnx_dir)
    node = DicomNode(
        predictor,
        ae_title=args.ae_title,
        port=args.port,
        host=args.host,
        forward=forward,
        out=out,
        max_queue=args.max_queue,
        report=not args.no_report,
    )
    try:
        node.start()
    except OSError as err:
        node.stop(drop_queued=True)
        raise UserError(
            f"cannot listen on {args.host}:{args.port} ({err.strerror or err}); another program (another node?) "
            "holds the port: stop it or pick another --port"
        ) from None
    print(
        f"covidcxr: DICOM node {args.ae_title} on {args.host}:{node.port}"
        + (f", results to {forward}" if forward else ", results not forwarded (no --forward)")
        + "; research use, not for clinical decisions; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    return _serve_until_interrupted(node)


def _serve_until_interrupted(node) -> int:
    """Wait for Ctrl-C (or SIGTERM); then read what is queued, or drop it on a second Ctrl-C."""
    # Ctrl-C, also when started in the background by a shell (which leaves SIGINT ignored), and a service
    # manager's SIGTERM: both stop the node the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        waiting = node.queue.qsize()
        print(
            f"covidcxr: stopping; reading the {waiting} object(s) still queued (Ctrl-C again drops them)",
            file=sys.stderr,
            flush=True,
        )
    try:
        node.stop()
    except KeyboardInterrupt:
        node.drop_queued()
        node.stop(drop_queued=True)  # logs the summary
    return 0
