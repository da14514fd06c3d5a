"""MTIL's eleven datasets as ZSCL reads them: ZSCL's tables (``tables``), the readers (``readers``), and the two file
formats read without scipy or numpy's unpickler: MAT-file v5 (``matlab``) and CIFAR-100's pickles (``cifar_pickle``)."""
