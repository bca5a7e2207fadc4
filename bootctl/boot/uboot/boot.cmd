# Rota A/B boot script for U-Boot (RAUC-compatible variables).
# Compile: mkimage -A arm64 -T script -C none -d boot.cmd boot.scr
#
# Variables (RAUC's convention, written by rota-bootctl and fw_setenv alike):
#   BOOT_ORDER    slots to try, in order ("A B")
#   BOOT_A_LEFT   boot attempts left for slot A, one hex digit (0..f)
#   BOOT_B_LEFT   boot attempts left for slot B
# The first slot in BOOT_ORDER with attempts left is chosen, its counter is decremented
# and saved BEFORE booting, and the kernel gets rota.slot=X. Once the running system is
# healthy, rota-bootctl mark-good restores the counter. When no slot has attempts left the
# counters are reset to 3 and the board resets: a robot must never stop at a prompt.
#
# No setexpr (some U-Boot builds lack it): counters are decremented by a lookup chain.
#
# Disk layout (GPT): 1 boot (FAT, this script and uboot.env), 2 rootfs-a, 3 rootfs-b,
# 4 data. The kernel and initrd live inside each rootfs: /boot/vmlinuz, /boot/initrd.img.
#
# The environment lives in the file uboot.env on partition 1 (a single env with CRC,
# fw_env.config on Linux: "/boot/efi/uboot.env 0x0 0x4000"). Two ways to keep it there:
#   rota_env_mode=file     (default) this script imports the file with "env import -c" and
#                          writes it back with "env export -c" + "fatwrite"; works whatever
#                          U-Boot's own env location is.
#   rota_env_mode=saveenv  U-Boot was built with its env in FAT (CONFIG_ENV_IS_IN_FAT) on
#                          this file, so plain "saveenv" is enough.
# Overridable before this script runs: rota_env_mode, rota_env_size (must match the file
# and fw_env.config, default 0x4000), rota_env_file, rota_env_addr (scratch RAM),
# rota_bootargs (extra kernel arguments), rota_fdt (device tree address).

test -n "${devtype}" || setenv devtype virtio
test -n "${devnum}" || setenv devnum 0
test -n "${rota_env_mode}" || setenv rota_env_mode file
test -n "${rota_env_size}" || setenv rota_env_size 0x4000
test -n "${rota_env_file}" || setenv rota_env_file uboot.env
test -n "${rota_env_addr}" || setenv rota_env_addr ${kernel_addr_r}
test -n "${rota_fdt}" || setenv rota_fdt ${fdtcontroladdr}
test -n "${rota_bootargs}" || setenv rota_bootargs "rootwait"

setenv rota_save 'if test "${rota_env_mode}" = "saveenv"; then saveenv; else env export -c -s ${rota_env_size} ${rota_env_addr} && fatwrite ${devtype} ${devnum}:1 ${rota_env_addr} ${rota_env_file} ${rota_env_size}; fi'

if test "${rota_env_mode}" != "saveenv"; then
  if load ${devtype} ${devnum}:1 ${rota_env_addr} ${rota_env_file}; then
    env import -c ${rota_env_addr} ${filesize} || echo "rota: ${rota_env_file} is corrupt, using defaults"
  else
    echo "rota: no ${rota_env_file} on partition 1, using defaults"
  fi
fi

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3

setenv rota_slot
for BOOT_SLOT in "${BOOT_ORDER}"; do
  if test -n "${rota_slot}"; then
    # a slot was chosen: skip the rest
    true
  elif test "x${BOOT_SLOT}" = "xA"; then
    if test 0x${BOOT_A_LEFT} -gt 0; then
      echo "rota: slot A has ${BOOT_A_LEFT} attempt(s) left, booting it"
      if test "${BOOT_A_LEFT}" = "f"; then setenv BOOT_A_LEFT e
      elif test "${BOOT_A_LEFT}" = "e"; then setenv BOOT_A_LEFT d
      elif test "${BOOT_A_LEFT}" = "d"; then setenv BOOT_A_LEFT c
      elif test "${BOOT_A_LEFT}" = "c"; then setenv BOOT_A_LEFT b
      elif test "${BOOT_A_LEFT}" = "b"; then setenv BOOT_A_LEFT a
      elif test "${BOOT_A_LEFT}" = "a"; then setenv BOOT_A_LEFT 9
      elif test "${BOOT_A_LEFT}" = "9"; then setenv BOOT_A_LEFT 8
      elif test "${BOOT_A_LEFT}" = "8"; then setenv BOOT_A_LEFT 7
      elif test "${BOOT_A_LEFT}" = "7"; then setenv BOOT_A_LEFT 6
      elif test "${BOOT_A_LEFT}" = "6"; then setenv BOOT_A_LEFT 5
      elif test "${BOOT_A_LEFT}" = "5"; then setenv BOOT_A_LEFT 4
      elif test "${BOOT_A_LEFT}" = "4"; then setenv BOOT_A_LEFT 3
      elif test "${BOOT_A_LEFT}" = "3"; then setenv BOOT_A_LEFT 2
      elif test "${BOOT_A_LEFT}" = "2"; then setenv BOOT_A_LEFT 1
      elif test "${BOOT_A_LEFT}" = "1"; then setenv BOOT_A_LEFT 0
      else setenv BOOT_A_LEFT 0
      fi
      setenv rota_slot A
      setenv rota_part 2
      setenv rota_label rootfs-a
    fi
  elif test "x${BOOT_SLOT}" = "xB"; then
    if test 0x${BOOT_B_LEFT} -gt 0; then
      echo "rota: slot B has ${BOOT_B_LEFT} attempt(s) left, booting it"
      if test "${BOOT_B_LEFT}" = "f"; then setenv BOOT_B_LEFT e
      elif test "${BOOT_B_LEFT}" = "e"; then setenv BOOT_B_LEFT d
      elif test "${BOOT_B_LEFT}" = "d"; then setenv BOOT_B_LEFT c
      elif test "${BOOT_B_LEFT}" = "c"; then setenv BOOT_B_LEFT b
      elif test "${BOOT_B_LEFT}" = "b"; then setenv BOOT_B_LEFT a
      elif test "${BOOT_B_LEFT}" = "a"; then setenv BOOT_B_LEFT 9
      elif test "${BOOT_B_LEFT}" = "9"; then setenv BOOT_B_LEFT 8
      elif test "${BOOT_B_LEFT}" = "8"; then setenv BOOT_B_LEFT 7
      elif test "${BOOT_B_LEFT}" = "7"; then setenv BOOT_B_LEFT 6
      elif test "${BOOT_B_LEFT}" = "6"; then setenv BOOT_B_LEFT 5
      elif test "${BOOT_B_LEFT}" = "5"; then setenv BOOT_B_LEFT 4
      elif test "${BOOT_B_LEFT}" = "4"; then setenv BOOT_B_LEFT 3
      elif test "${BOOT_B_LEFT}" = "3"; then setenv BOOT_B_LEFT 2
      elif test "${BOOT_B_LEFT}" = "2"; then setenv BOOT_B_LEFT 1
      elif test "${BOOT_B_LEFT}" = "1"; then setenv BOOT_B_LEFT 0
      else setenv BOOT_B_LEFT 0
      fi
      setenv rota_slot B
      setenv rota_part 3
      setenv rota_label rootfs-b
    fi
  fi
done

if test -z "${rota_slot}"; then
  echo "rota: no slot has attempts left; resetting the counters to 3 and resetting"
  setenv BOOT_A_LEFT 3
  setenv BOOT_B_LEFT 3
  run rota_save
  reset
fi

# Save the decremented counter before booting: if this boot hangs or crashes, the next
# one sees one attempt fewer.
run rota_save

setenv bootargs "${rota_bootargs} root=PARTLABEL=${rota_label} rota.slot=${rota_slot}"
echo "rota: booting slot ${rota_slot} from ${devtype} ${devnum}:${rota_part}"
load ${devtype} ${devnum}:${rota_part} ${kernel_addr_r} /boot/vmlinuz
if load ${devtype} ${devnum}:${rota_part} ${ramdisk_addr_r} /boot/initrd.img; then
  booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${rota_fdt}
else
  booti ${kernel_addr_r} - ${rota_fdt}
fi

# Only reached if the kernel could not be started: count it as a failed attempt.
echo "rota: slot ${rota_slot} failed to start; resetting"
reset
