use super::*;

/// A fresh directory under the system's temporary directory.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "infire-fp-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn model_dir(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    std::fs::write(dir.join("config.json"), b"{\"hidden_size\": 8}").unwrap();
    std::fs::write(dir.join("model.safetensors"), vec![7u8; 3000]).unwrap();
    std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
    std::fs::write(dir.join("README.md"), b"not hashed").unwrap();
    dir
}

#[test]
fn same_content_same_fingerprint_anywhere() {
    let a = model_dir("a");
    let b = model_dir("b");
    let fa = fingerprint(&a).unwrap();
    assert!(fa.starts_with("fp_") && fa.len() == 3 + 64, "{fa}");
    assert_eq!(fa, fingerprint(&b).unwrap());
    // Files that do not decide the answers are not hashed.
    std::fs::write(b.join("README.md"), b"changed").unwrap();
    assert_eq!(fa, fingerprint(&b).unwrap());
}

#[test]
fn any_decisive_file_changes_it() {
    let dir = model_dir("change");
    let before = fingerprint(&dir).unwrap();
    std::fs::write(dir.join("chat_template.jinja"), b"{{ messages }}").unwrap();
    let with_template = fingerprint(&dir).unwrap();
    assert_ne!(before, with_template);
    // Same size, other bytes: the cache's size+mtime key must not hide it once mtime moves.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(dir.join("model.safetensors"), vec![8u8; 3000]).unwrap();
    assert_ne!(with_template, fingerprint(&dir).unwrap());
}

#[test]
fn cached_beside_the_model_and_trusted_while_unchanged() {
    let dir = model_dir("cache");
    let fp = fingerprint(&dir).unwrap();
    let cache = dir.join(CACHE_NAME);
    let cached: Cached = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(cached.fingerprint, fp);
    assert_eq!(cached.files.len(), 3);
    // A cache entry that matches the files' stamps is used as is (so it was not re-hashed).
    let forged = Cached {
        fingerprint: "fp_forged".into(),
        ..cached
    };
    std::fs::write(&cache, serde_json::to_vec(&forged).unwrap()).unwrap();
    assert_eq!(fingerprint(&dir).unwrap(), "fp_forged");
}

#[test]
fn a_gguf_file_is_hashed_whole() {
    let dir = temp_dir("gguf");
    let file = dir.join("m.gguf");
    std::fs::write(&file, b"GGUF....").unwrap();
    let fp = fingerprint(&file).unwrap();
    assert!(dir.join("m.gguf.infire-fingerprint.json").is_file());
    // A copy under another name is the same model; other bytes are another.
    std::fs::write(dir.join("copy.gguf"), b"GGUF....").unwrap();
    assert_eq!(fp, fingerprint(&dir.join("copy.gguf")).unwrap());
    std::fs::write(dir.join("other.gguf"), b"GGUF...!").unwrap();
    assert_ne!(fp, fingerprint(&dir.join("other.gguf")).unwrap());
}

#[test]
fn a_missing_model_is_an_error() {
    let err = fingerprint(Path::new("/nonexistent/model")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model"), "{err}");
}
