#!/usr/bin/env bash
# Makes sure a Vulkan driver is present. On a machine without a GPU driver this
# installs Mesa's lavapipe (software Vulkan on the CPU), which is what the tests
# and CI run on. Sourced by scripts/fsd3d and scripts/test.
# Any installed ICD manifest counts (a missing folder must not hide the other).
for icd in /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json; do
    if [ -e "$icd" ]; then
        return 0 2>/dev/null || exit 0
    fi
done
echo "no Vulkan driver found: installing mesa-vulkan-drivers (lavapipe)" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq mesa-vulkan-drivers >/dev/null
# The Vulkan loader complains on stderr when this is unset on a headless machine.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
