//! Loop devices for kernel erofs image trees: an image file attached, read-only and
//! autoclearing, to a free `/dev/loopN`, which the kernel's erofs then mounts as a block
//! device.
//!
//! Why not the file itself (erofs mounts files since Linux 6.12): measured on 6.18 (issue
//! 13), a file-backed erofs reads its image synchronously in the reader's own thread, and
//! its metadata one 4 KiB block at a time without readahead; through a loop device the
//! reads are asynchronous and go through the backing file's readahead. A cold `dd` of a
//! 1 GiB file took 0.53-0.82 s from a loop device against 0.89-0.93 s from the file
//! (alternated, 5 pairs); a cold `find -printf` of 56,000 entries made 297 disk reads of
//! 755 KiB against 5,110 of 5 KiB.
//!
//! The device holds its own reference on the file (the one the daemon opened and checked),
//! so the kernel still holds the image while a tree is mounted, as `lease_probe` expects;
//! autoclear detaches the device when its last opener (the erofs superblock) lets go, so a
//! lazily detached tree in use keeps its device until the last process leaves it.
//!
//! Invariant: a device is configured only from a file this daemon opened, read-only.

use std::fs::File;
use std::os::fd::AsRawFd;

/// `LOOP_CTL_GET_FREE` (linux/loop.h): the number of a free loop device, made if needed.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// `LOOP_CONFIGURE` (Linux 5.8): binds a file and sets the flags in one call.
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Another process may take the free device between the two calls (`EBUSY`): try anew.
const ATTEMPTS: usize = 4;

/// `struct loop_info64` of linux/loop.h.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of linux/loop.h.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// A loop device bound to an image file; the open device keeps it bound until dropped,
/// and after that only as long as someone else (a mount) has it open.
pub(super) struct LoopDevice {
    /// `/dev/loopN`.
    pub(super) path: String,
    _dev: File,
}

/// Binds `file` (opened read-only) to a free loop device, read-only and autoclearing.
/// Errors name the device or `/dev/loop-control`; no loop driver, no device node or no
/// free device is an error the caller answers by mounting the file itself.
pub(super) fn attach(file: &File) -> std::io::Result<LoopDevice> {
    let control = File::open("/dev/loop-control")
        .map_err(|e| std::io::Error::new(e.kind(), format!("/dev/loop-control: {e}")))?;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        // SAFETY: an ioctl without argument on a descriptor we own.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                e.kind(),
                format!("/dev/loop-control: no free loop device: {e}"),
            ));
        }
        let path = format!("/dev/loop{n}");
        let dev =
            File::open(&path).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
        let config = LoopConfig {
            fd: file.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `config` is, and
        // lives across the call.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &config) };
        if r == 0 {
            return Ok(LoopDevice { path, _dev: dev });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{path}: LOOP_CONFIGURE: {e}"),
            ));
        }
        last = Some(format!("{path}: taken meanwhile"));
    }
    Err(std::io::Error::other(format!(
        "no free loop device after {ATTEMPTS} attempts ({})",
        last.unwrap_or_default()
    )))
}
