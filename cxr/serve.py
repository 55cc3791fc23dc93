"""``python -m cxr.serve ckpt_path=<.ckpt | .onnx> [host=127.0.0.1 port=8000]``: serve a model over HTTP (batched
``/predict``, ``/cam``, a web page, ``/health``, ``/ready``, ``/metrics``); the service is the job
:mod:`cxr.jobs.serve`, its settings ``conf/serve.yaml`` (docs/serving.md)."""


def main() -> None:
    """``cxr-serve`` / ``python -m cxr.serve ckpt_path=<.ckpt | .onnx> [host=... port=...]``."""
    from cxr.cli import job_app, run_app
    from cxr.jobs.serve import serve

    run_app(job_app(serve, "serve", "python -m cxr.serve"))


if __name__ == "__main__":
    main()
