//! Finding the CUDA libraries cudarc opens by soname (libnvrtc, libcublasLt) when they are not
//! on the loader's path: a toolkit under `$CUDA_HOME`, `$CUDA_PATH` or `/usr/local/cuda`
//! usually is not. Loading one by full path first makes the later `dlopen` by soname find it.
//! (The Python layer does the same for NVIDIA's pip wheels.)

use std::path::PathBuf;
use std::sync::Once;

/// libnvrtc opens its builtins library by soname too, so it goes first.
const LIBS: [&str; 3] = [
    "libnvrtc-builtins.so.13",
    "libnvrtc.so.13",
    "libcublasLt.so.13",
];

fn lib_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            dirs.push(PathBuf::from(root).join("lib64"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs
}

/// Loads each library from the first toolkit directory that has it, once per process.
/// Libraries already loadable by soname are left alone.
pub fn preload() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for name in LIBS {
            // SAFETY: loading CUDA's own libraries runs only their initializers.
            if unsafe { libloading::Library::new(name) }.is_ok() {
                continue;
            }
            for dir in lib_dirs() {
                // The builtins library carries the minor version (`.so.13.0`).
                let Some(path) = std::fs::read_dir(&dir).ok().and_then(|entries| {
                    entries.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
                        p.file_name()
                            .is_some_and(|f| f.to_string_lossy().starts_with(name))
                    })
                }) else {
                    continue;
                };
                // SAFETY: as above. The library stays loaded for the life of the process.
                if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
                    std::mem::forget(lib);
                    break;
                }
            }
        }
    });
}
