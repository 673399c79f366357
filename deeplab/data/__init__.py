"""Dataset preparation: PASCAL VOC 2012 with the SBD augmentation, CamVid and the embedded
synthetic set (``datasets``, ``synthetic``), and resumable, verified downloads (``download``)."""
