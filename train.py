"""Train, evaluate and save one run: python train.py [program=A|B|C|D] [data=demo|nih] [key=value ...]

Multirun: python train.py -m program=A,B,C
Resume a killed run in its own directory: python train.py resume=outputs/train/runs/<run>
The same as the installed command ``cxr-train`` (cxr.cli.train_main).
"""

from cxr.cli import train_main

if __name__ == "__main__":
    train_main()
