//! `plugind plugin …`: package a folder, print a checksum, sign, verify and
//! make signing keys.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;

use super::signature::{write_keypair, AuthorizedCategory};
use super::{
    checksum, decode_with_keys, package_dir, read_archive, sign, verify, DecodeLimits,
    PluginUniqueIdentifier, SignatureKeys,
};

/// The reference daemon's default `MAX_PLUGIN_PACKAGE_SIZE` (50 MiB).
const DEFAULT_MAX_SIZE: u64 = 52_428_800;

/// Work with `.difypkg` plugin packages.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Package a plugin folder into a .difypkg file.
    Package {
        /// The plugin folder (holding manifest.yaml).
        dir: PathBuf,
        /// Where to write the package [default: <folder name>.difypkg].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Refuse packages whose files add up to more bytes than this.
        #[arg(long, default_value_t = DEFAULT_MAX_SIZE)]
        max_size: u64,
    },
    /// Print a package's checksum and unique identifier.
    Checksum {
        /// The .difypkg file.
        file: PathBuf,
    },
    /// Sign a package with an RSA private key (PEM).
    Sign {
        /// The .difypkg file.
        file: PathBuf,
        /// The private key, PKCS#1 or PKCS#8 PEM.
        #[arg(long)]
        key: PathBuf,
        /// Who vouches for the plugin; written to .verification.dify.json.
        #[arg(long, value_parser = parse_category)]
        category: Option<AuthorizedCategory>,
        /// Where to write the signed package [default: <name>.signed.difypkg].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Verify a package's signature; exits non-zero when it is not valid.
    Verify {
        /// The .difypkg file.
        file: PathBuf,
        /// Extra trusted public keys (PEM), besides the official one.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
    },
    /// Make an RSA key pair for signing: <prefix>.private.pem and
    /// <prefix>.public.pem.
    Keygen {
        /// Path prefix of the two files.
        #[arg(default_value = "plugin_key")]
        prefix: PathBuf,
        /// Key size in bits.
        #[arg(long, default_value_t = 4096)]
        bits: usize,
    },
}

fn parse_category(s: &str) -> Result<AuthorizedCategory, String> {
    s.parse()
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// `dir/name.difypkg` → `dir/name.signed.difypkg`.
fn signed_name(file: &Path) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".to_string());
    file.with_file_name(format!("{stem}.signed.difypkg"))
}

/// Runs one `plugind plugin` command, printing its result on stdout.
pub fn run(cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Package {
            dir,
            output,
            max_size,
        } => {
            let bytes = package_dir(&dir, max_size)
                .with_context(|| format!("cannot package {}", dir.display()))?;
            let output = output.unwrap_or_else(|| {
                let name = dir
                    .canonicalize()
                    .ok()
                    .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "plugin".to_string());
                PathBuf::from(format!("{name}.difypkg"))
            });
            write(&output, &bytes)?;
            println!("{}", output.display());
        }
        PluginCommand::Checksum { file } => {
            let bytes = read(&file)?;
            let archive = read_archive(&bytes, &DecodeLimits::for_local_files())
                .with_context(|| format!("cannot read {}", file.display()))?;
            let sum = checksum(
                archive
                    .entries
                    .iter()
                    .map(|(n, c)| (n.as_str(), c.as_slice())),
            );
            let declaration = super::manifest::resolve(archive.entries.as_slice())
                .with_context(|| format!("cannot read the manifest of {}", file.display()))?;
            let identifier = PluginUniqueIdentifier::new(
                &declaration.author,
                &declaration.name,
                &declaration.version,
                &sum,
            )?;
            println!("{sum}");
            println!("{identifier}");
        }
        PluginCommand::Sign {
            file,
            key,
            category,
            output,
        } => {
            let bytes = read(&file)?;
            let pem = String::from_utf8(read(&key)?)
                .with_context(|| format!("{} is not a PEM file", key.display()))?;
            // Refuse to sign something that would not install.
            decode_with_keys(
                &bytes,
                &DecodeLimits::for_local_files(),
                &SignatureKeys::official(),
            )
            .with_context(|| format!("{} is not a valid package", file.display()))?;
            let signed = sign(&bytes, &pem, category)?;
            let output = output.unwrap_or_else(|| signed_name(&file));
            write(&output, &signed)?;
            println!("{}", output.display());
        }
        PluginCommand::Verify { file, keys } => {
            let bytes = read(&file)?;
            let trusted = SignatureKeys::from_files(&keys)?;
            match verify(&bytes, &trusted) {
                Ok(verification) => {
                    let category = verification.unwrap_or_default().authorized_category;
                    println!("signature valid (authorized category: {category})");
                }
                Err(e) => bail!("{}: {e}", file.display()),
            }
        }
        PluginCommand::Keygen { prefix, bits } => {
            let (private, public) = write_keypair(&prefix, bits)?;
            println!("{}", private.display());
            println!("{}", public.display());
        }
    }
    Ok(())
}
