"""Export a checkpoint: python export.py ckpt_path=<.ckpt> format=onnx|torchscript [output=<file>]

Embeds preprocessing, output names and the run's operating point; checks parity on real images at export time
(max |delta p| printed and stored in <file>.parity.json). Exit status 2 on a bad argument or a failed parity check.
The same as the installed command ``cxr-export`` (cxr.cli.export_main).
"""

from cxr.cli import export_main as main

if __name__ == "__main__":
    main()
