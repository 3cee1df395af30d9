#!/bin/sh
# Upgrade the legacy nets here with real BVLC Caffe's own tool, for tests/engine/test_upgrade.py:
#   source /work/caffe-ref/env.sh && sh tests/golden/upgrade/make_upgrade_golden.sh
# writes <name>.upgraded.prototxt beside each <name>.prototxt.
set -e
cd "$(dirname "$0")"
for f in v0_net v0_data v1_net bn_legacy; do
  GLOG_minloglevel=2 upgrade_net_proto_text "$f.prototxt" "$f.upgraded.prototxt"
done
