"""ImageNet-100, unlabelled: Leopart's fine-tuning data (126,689 train images, 100 classes).

Leopart reads the class list from ``ROOT/imagenet100.txt`` and does not ship it; its image
count is that of the ImageNet-100 subset of CMC (Tian et al., HobbitLong/CMC
``imagenet100.txt``), which is built in below and used when the root has no list of its own.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LayoutError
from .base import Sample, SegmentationDataset, list_images, read_id_list, register_dataset, require

CLASS_LIST_FILE = "imagenet100.txt"
IMAGENET100_WNIDS = tuple(
    """
    n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245 n01773797
    n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148 n03530642 n04435653
    n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993 n04493381 n02109047 n04111531
    n02877765 n04429376 n02009229 n01978455 n02106550 n01820546 n01692333 n07714571 n02974003 n02114855
    n03785016 n03764736 n03775546 n02087046 n07836838 n04099969 n04592741 n03891251 n02701002 n03379051
    n02259212 n07715103 n03947888 n04026417 n02326432 n03637318 n01980166 n02113799 n02086240 n03903868
    n02483362 n04127249 n02089973 n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322
    n02113978 n03787032 n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029
    n03837869 n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045
    n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672 n02090622
""".split()
)


@register_dataset("imagenet100")
class ImageNet100(SegmentationDataset):
    """Images of the 100 classes only, ids ``<wnid>/<file stem>``; no masks, no class names."""

    splits = ("train", "val")
    layout = (
        "  ROOT/{train,val}/<wnid>/*.JPEG   ImageNet folder layout; all 100 ImageNet-100 class folders needed\n"
        "  ROOT/imagenet100.txt             optional: the 100 wnids, one per line (default: CMC's list)"
    )

    def __init__(self, root: Path, split: str) -> None:
        class_list = root / CLASS_LIST_FILE
        wnids = read_id_list(class_list, self.layout) if class_list.exists() else list(IMAGENET100_WNIDS)
        folder = require(root / split, self.layout)
        missing = [wnid for wnid in wnids if not (folder / wnid).is_dir()]
        if missing:
            raise LayoutError(
                f"{len(missing)} ImageNet-100 class folders missing under {folder}: "
                f"{', '.join(missing)}; expected layout:\n{self.layout}"
            )
        super().__init__(
            root, split, [Sample(f"{wnid}/{path.stem}", path) for wnid in wnids for path in list_images(folder / wnid)]
        )
