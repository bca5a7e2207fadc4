//! Power-cut harness (see updater/README.md).

mod common;

use std::fs;
use std::io::Write;
use std::process::Command;

use common::blockdev::{run, Loop, Mount};
use common::recorder::{Disks, Event};

#[test]
fn an_fsync_on_ext4_over_loop_reaches_the_recorder_as_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let disks = Disks::new(vec![("data".into(), vec![0; 8 << 20])]);
    let fuse_dir = dir.path().join("disks");
    fs::create_dir(&fuse_dir).unwrap();
    let session = disks.mount(&fuse_dir);
    {
        let device = Loop::attach(&fuse_dir.join("data"));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "1024"])
            .arg(device.path()));
        let mount = Mount::new(device.path(), &dir.path().join("data"), "ext4", "rw");
        let before = disks.log_len();
        let mut file = fs::File::create(dir.path().join("data/state")).unwrap();
        file.write_all(b"hello").unwrap();
        let after_write = disks.log_len();
        file.sync_all().unwrap();
        let log = disks.log();
        eprintln!(
            "before {before} after write {after_write} after fsync {}",
            log.len()
        );
        for event in &log[before..] {
            match event {
                Event::Write { offset, data, .. } => eprintln!("write {offset} {}", data.len()),
                Event::Flush { .. } => eprintln!("flush"),
            }
        }
        assert!(log[after_write..]
            .iter()
            .any(|event| matches!(event, Event::Flush { .. })));
        drop(file);
        mount.unmount();
    }
    session.umount_and_join().unwrap();
}
