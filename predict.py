"""Predict on new X-rays: python predict.py ckpt_path=<.ckpt or exported .onnx> inputs=<file|folder|glob|@list.txt>

PNG, JPEG and DICOM (recognised by content); cam=true adds Grad-CAM overlays; json=true a JSON copy.
Exit status: 0 all inputs predicted, 1 some inputs failed (rows with an error), 2 a bad model or input argument.
The same as the installed command ``cxr-predict`` (cxr.cli.predict_main).
"""

from cxr.cli import predict_main as main

if __name__ == "__main__":
    main()
