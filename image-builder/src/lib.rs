//! rota-image: builds what goes onto a robot (reproducible rootfs images, signed bundles, golden
//! disk and VM images) and flashes disk images. `main.rs` only parses the command line and calls
//! one `run` function per subcommand from [`commands`].

pub mod app_cmd;
pub mod bundle_cmd;
pub mod cli;
pub mod commands;
pub mod delta_cmd;
pub mod ext4;
pub mod flash;
pub mod golden;
pub mod in_use;
pub mod inspect;
pub mod keys;
pub mod progress;
pub mod rootfs;
pub mod size;
pub mod sparse;
pub mod tools;
pub mod tree;
