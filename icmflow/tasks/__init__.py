"""Task evaluation: map a dataset's categories to a model's classes, write predictions as COCO
results or label PNGs, and score them (COCO mAP for boxes and masks, mIoU for semantic maps).

Library code: it reads and writes the files it is given and knows nothing of stages or params.
"""
