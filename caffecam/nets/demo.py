"""The demo net: GoogLeNet-CAM narrowed and cut at inception_3b, trained from scratch on the synthetic set."""

from caffecam.nets.builders import image_data_layers, solver
from caffecam.nets.googlenet_cam import googlenet_cam

# The demo (small net trained from scratch on synthetic images; scripts/demo.py). Measured choices:
# - the trunk stops at inception_3b (stride 8, a 12x12 map at 96 px): through inception_4e every position sees the
#   whole 96 px image and the maps come out as a uniform blob, whatever the object's position;
# - objects of 25-45% of the side; the box threshold is picked on training images (scripts/demo.py), since
#   these maps are smoother relative to the object than ImageNet CAMs, for which the paper's 0.2 was chosen.
DEMO_NUM_CLASSES = 5
DEMO_IMAGES = 1200
DEMO_MIN_SCALE = 0.25
DEMO_MAX_SCALE = 0.45
DEMO_IMAGE_SIZE = 96  # ImageData new_height/new_width
DEMO_INPUT_SIZE = 96  # crop_size
DEMO_WIDTH_DIV = 8
DEMO_LAST_BLOCK = "3b"
DEMO_BATCH_TRAIN = 32
DEMO_BATCH_TEST = 48
DEMO_TEST_ITER = 5  # 5 x 48 = the 240 validation images
DEMO_TEST_INTERVAL = 50
DEMO_BASE_LR = 0.005
DEMO_GAMMA = 0.1
DEMO_STEPSIZE = 200
DEMO_MAX_ITER = 300
DEMO_DISPLAY = 10
DEMO_AVERAGE_LOSS = 10
DEMO_SNAPSHOT = 100
DEMO_RANDOM_SEED = 1
DEMO_SNAPSHOT_PREFIX = "snapshots/demo/demo"


def demo_train_val(num_classes=DEMO_NUM_CLASSES, image_size=DEMO_IMAGE_SIZE, input_size=DEMO_INPUT_SIZE,
                   width_div=DEMO_WIDTH_DIV):
    data = image_data_layers("data/demo/train.txt", "data/demo/val.txt", "data/demo/", image_size, input_size,
                             DEMO_BATCH_TRAIN, DEMO_BATCH_TEST)
    return googlenet_cam(num_classes, width_div, input_size, data=data, head="loss", name="GoogleNet-CAM-demo",
                         last_block=DEMO_LAST_BLOCK)


def demo_deploy(num_classes=DEMO_NUM_CLASSES, input_size=DEMO_INPUT_SIZE, width_div=DEMO_WIDTH_DIV):
    return googlenet_cam(num_classes, width_div, input_size, head="prob", name="GoogleNet-CAM-demo",
                         last_block=DEMO_LAST_BLOCK)


def demo_solver(net_dir="prototxt"):
    return solver(f"{net_dir}/demo_train_val.prototxt", test_iter=DEMO_TEST_ITER, test_interval=DEMO_TEST_INTERVAL,
                  base_lr=DEMO_BASE_LR, gamma=DEMO_GAMMA, stepsize=DEMO_STEPSIZE, max_iter=DEMO_MAX_ITER,
                  display=DEMO_DISPLAY, average_loss=DEMO_AVERAGE_LOSS, snapshot=DEMO_SNAPSHOT,
                  snapshot_prefix=DEMO_SNAPSHOT_PREFIX, solver_mode="CPU", random_seed=DEMO_RANDOM_SEED)
