//! The fuzz targets' bodies, one function per input format, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`, libFuzzer on nightly) and by the stable-Rust regression and
//! mutation test (`tests/fuzz_regression.rs`), which include this file with `#[path]`.
//!
//! Each function feeds arbitrary bytes to a parser through the crate's public API and goes on
//! with whatever parses (dequantize every tensor, render, encode). The property is the same for
//! all: an `Err` is fine, a panic, abort or hang is a bug. [`http`] also asserts that no request
//! gets a 5xx other than 503.

#![allow(dead_code)] // each includer uses some of these functions

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use infire::config::ModelConfig;
use infire::engine::EngineArgs;
use infire::server::{self, AppState, ModelSpec, Node, ServerConfig};
use infire::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use infire::weights::gguf::GgufFile;
use infire::weights::safetensors::SafetensorsWeights;
use infire::weights::WeightSource;

/// A GGUF file: header, config, tokenizer, and every tensor dequantized.
pub fn gguf(data: &[u8]) {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let has_output = file.contains("lm_head.weight");
    let _ = ModelConfig::from_gguf(file.metadata(), has_output, Path::new("fuzz.gguf"));
    if let Ok(tok) = Tokenizer::from_gguf_metadata(file.metadata()) {
        exercise_tokenizer(&tok);
    }
    for name in file.names() {
        let _ = file.load_f32(&name);
    }
}

/// A safetensors file (written to a scratch file: the reader memory-maps), every tensor read.
pub fn safetensors(data: &[u8]) {
    let path = scratch("model.safetensors");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(w) = SafetensorsWeights::open_file(&path) {
        for name in w.names() {
            let _ = w.load_f32(&name);
            let _ = w.raw(&name);
        }
    }
}

/// An HF `config.json`.
pub fn config(data: &[u8]) {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(cfg) = ModelConfig::from_hf_json(&json) {
            let _ = cfg.rope_inv_freq();
        }
    }
}

/// An HF `tokenizer.json` (in a scratch directory, as models ship it), then encode and decode.
pub fn tokenizer(data: &[u8]) {
    let dir = scratch("tokenizer");
    if std::fs::create_dir_all(&dir).is_err()
        || std::fs::write(dir.join("tokenizer.json"), data).is_err()
    {
        return;
    }
    if let Ok(tok) = Tokenizer::from_hf_dir(&dir) {
        exercise_tokenizer(&tok);
    }
}

/// A chat template (the input's text) compiled and rendered over a short conversation.
pub fn template(data: &[u8]) {
    let source = String::from_utf8_lossy(data);
    if let Ok(t) = ChatTemplate::new(&source, Some("<s>"), Some("</s>")) {
        let messages = [
            ChatMessage::new("system", "be brief"),
            ChatMessage::new("user", "hello"),
            ChatMessage::new("assistant", "hi"),
        ];
        let _ = t.render(&messages, true);
    }
}

/// Raw bytes sent as an HTTP request to a live server (tiny model, CPU); asserts that the
/// answer, if any, is not a 5xx other than 503.
pub fn http(data: &[u8]) {
    let addr = *test_server();
    let Ok(mut tcp) = TcpStream::connect(addr) else {
        panic!("the test server stopped accepting connections");
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = tcp.write_all(data);
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = tcp.take(1 << 20).read_to_end(&mut answer);
    let status = answer
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok());
    if let Some(status) = status {
        assert!(
            status < 500 || status == 503,
            "status {status} for request {:?}",
            String::from_utf8_lossy(data)
        );
    }
}

/// Encodes a sample text, decodes it back and decodes some arbitrary ids.
fn exercise_tokenizer(tok: &Tokenizer) {
    if let Ok(ids) = tok.encode("Hello, world! ünïcødé 123", true) {
        let _ = tok.decode(&ids, false);
    }
    let _ = tok.decode(&[0, 1, 2, 3, u32::MAX], true);
}

/// A path in this process's scratch directory.
fn scratch(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("infire-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
    .join(name)
}

/// The address of a server on the tiny test model, started once per process.
fn test_server() -> &'static SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    ADDR.get_or_init(|| {
        let model = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tiny_models/llama_tied_mha");
        let model = if model.exists() {
            model
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_models/llama_tied_mha")
        };
        let args = EngineArgs {
            device: "cpu".into(),
            kv_cache_tokens: Some(4096),
            max_model_len: Some(256),
            ..Default::default()
        };
        let spec = ModelSpec {
            name: "tiny".into(),
            aliases: Vec::new(),
            path: model,
            args,
            memory: None,
            on_demand: false,
        };
        let node = Node::start(vec![spec], None).expect("the tiny model loads");
        let server_config = ServerConfig {
            port: 0,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            ..ServerConfig::new("tiny")
        };
        let state = Arc::new(AppState::new(node, server_config));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let _ = runtime.block_on(server::serve(state, move |addr| {
                let _ = tx.send(addr);
            }));
        });
        rx.recv_timeout(Duration::from_secs(120))
            .expect("the test server starts")
    })
}
