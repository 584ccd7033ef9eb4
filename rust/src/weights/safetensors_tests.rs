use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, empty directory under the system temp dir, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("infire-st-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(super) fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.0.join(name), bytes).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A safetensors file, written as the format describes, of (name, dtype, shape, bytes).
pub(super) fn file(tensors: &[(&str, &str, &[u64], Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data: Vec<u8> = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let offsets = [data.len(), data.len() + bytes.len()];
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}),
        );
        data.extend(bytes);
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(data);
    out
}

pub(super) fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn sample() -> Vec<u8> {
    file(&[
        ("w32", "F32", &[2, 2], f32s(&[1.0, -2.0, 3.5, 0.25])),
        (
            "w16",
            "F16",
            &[3],
            [0x00, 0x3C, 0x00, 0xC0, 0x00, 0x7C].to_vec(),
        ),
        ("wbf", "BF16", &[1, 2], [0xC0, 0x3F, 0xF7, 0xC2].to_vec()),
        ("ids", "I64", &[1], 7i64.to_le_bytes().to_vec()),
    ])
}

fn open_err(dir: &Path) -> String {
    match SafetensorsWeights::open_dir(dir) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn reads_a_single_file() {
    let dir = TempDir::new("single");
    dir.write(SINGLE_FILE, &sample());
    let w = SafetensorsWeights::open_dir(&dir.0).unwrap();
    assert_eq!(w.names(), ["ids", "w16", "w32", "wbf"]);
    let t = w.load_f32("w32").unwrap();
    assert_eq!((t.shape, t.data), (vec![2, 2], vec![1.0, -2.0, 3.5, 0.25]));
    // f16's infinity converts, and a weight holding it is refused by name.
    let f16s = w.raw("w16").map(|r| r.bytes.to_vec());
    assert_eq!(f16s, None, "a sampled infinity hides the raw bytes");
    let e = w.load_f32("w16").unwrap_err().to_string();
    assert!(
        e.contains("tensor w16 holds a non-finite value (inf)"),
        "{e}"
    );
    let (_, entry) = &w.tensors["w16"];
    let converted = convert("F16", &w.shards[0].mmap[entry.range.clone()]).unwrap();
    assert_eq!(converted, [1.0, -2.0, f32::INFINITY]);
    assert_eq!(w.load_f32("wbf").unwrap().data, [1.5, -123.5]);
    assert_eq!(
        (w.dtype("wbf"), w.shape("wbf")),
        (Some("BF16"), Some(&[1, 2][..]))
    );
    assert!(w.contains("ids") && !w.contains("nope"));
    let e = w.load_f32("ids").unwrap_err().to_string();
    assert!(
        e.contains("tensor ids: dtype I64 cannot be converted"),
        "{e}"
    );
    assert!(w
        .load_f32("nope")
        .unwrap_err()
        .to_string()
        .contains("no tensor nope"));
}

#[test]
fn reads_shards_through_the_index() {
    let dir = TempDir::new("sharded");
    dir.write(
        "a.safetensors",
        &file(&[
            ("x", "F32", &[1], f32s(&[1.0])),
            ("y", "F32", &[1], f32s(&[2.0])),
        ]),
    );
    dir.write(
        "b.safetensors",
        &file(&[("z", "BF16", &[1], vec![0x80, 0x3F])]),
    );
    let index = r#"{"metadata": {"total_size": 10},
        "weight_map": {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}}"#;
    dir.write(INDEX_FILE, index.as_bytes());
    let w = SafetensorsWeights::open_dir(&dir.0).unwrap();
    assert_eq!(w.names(), ["x", "y", "z"]);
    assert_eq!(w.shards.len(), 2);
    assert_eq!(w.load_f32("y").unwrap().data, [2.0]);
    assert_eq!(w.load_f32("z").unwrap().data, [1.0]);
}

#[test]
fn broken_checkpoint_directories() {
    let dir = TempDir::new("broken");
    assert!(open_err(&dir.0).contains("no model.safetensors or model.safetensors.index.json"));
    assert!(open_err(&dir.0.join("absent")).contains("model not found"));
    dir.write("a.safetensors", &file(&[("x", "F32", &[1], f32s(&[1.0]))]));
    let cases = [
        (
            r#"{"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}"#,
            "shard b.safetensors (holding y) is missing",
        ),
        (
            r#"{"weight_map": {"w": "a.safetensors"}}"#,
            "index maps w to a.safetensors, which does not contain it",
        ),
        (
            r#"{"weight_map": {"x": "../a.safetensors"}}"#,
            "not a plain file name",
        ),
        (
            r#"{"weight_map": {"x": "/etc/a.safetensors"}}"#,
            "not a plain file name",
        ),
        (r#"{"weight_map": ["#, "bad index JSON"),
    ];
    for (index, want) in cases {
        dir.write(INDEX_FILE, index.as_bytes());
        let e = open_err(&dir.0);
        assert!(e.contains(want), "{e} should contain {want}");
    }
}

#[test]
fn corrupt_headers_are_errors() {
    let entry = |dtype: &str, shape: &str, offsets: &str| {
        let json = format!(
            r#"{{"t": {{"dtype": "{dtype}", "shape": {shape}, "data_offsets": {offsets}}}}}"#
        );
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json.as_bytes());
        out.extend([0u8; 16]);
        parse_header(&out).unwrap_err()
    };
    assert!(entry("F32", "[2]", "[0, 17]").contains("exceed the 16 data bytes"));
    assert!(entry("F32", "[2]", "[8, 4]").contains("exceed"));
    assert!(entry("F32", "[3]", "[0, 8]").contains("needs 12 bytes, offsets give 8"));
    assert!(entry("F32", "[4294967296, 4294967296, 16]", "[0, 8]").contains("overflows"));
    assert!(entry("F32", "[-1]", "[0, 8]").contains("tensor t"));
    assert!(entry("F32", "[2]", "[0]").contains("tensor t"));
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend(b"{}");
    assert!(parse_header(&huge).unwrap_err().contains("header length"));
    let mut not_json = 4u64.to_le_bytes().to_vec();
    not_json.extend(b"{{{{");
    assert!(parse_header(&not_json)
        .unwrap_err()
        .contains("bad header JSON"));
    // An unknown dtype is accepted until loaded (a model may never need that tensor).
    let mut odd = file(&[("t", "F4", &[2], vec![0])]);
    assert_eq!(parse_header(&odd).unwrap()["t"].dtype, "F4");
    odd.truncate(odd.len() - 1);
    assert!(parse_header(&odd).unwrap_err().contains("exceed"));
}

/// Every prefix and single-byte corruption of a valid file parses to an error or to entries
/// whose ranges load; nothing panics.
#[test]
fn truncated_or_flipped_files_never_panic() {
    let full = sample();
    for len in 0..full.len() {
        assert!(parse_header(&full[..len]).is_err(), "prefix of {len} bytes");
    }
    for at in 0..full.len() {
        for mask in [0x01, 0x20, 0xFF] {
            let mut bytes = full.clone();
            bytes[at] ^= mask;
            if let Ok(entries) = parse_header(&bytes) {
                for e in entries.values() {
                    let _ = convert(&e.dtype, &bytes[e.range.clone()]);
                }
            }
        }
    }
}

#[test]
fn converts_large_tensors_in_parallel_chunks() {
    let values: Vec<f32> = (0..3 * ELEMENTS_PER_TASK + 5)
        .map(|i| i as f32 * 0.5)
        .collect();
    assert_eq!(convert("F32", &f32s(&values)).unwrap(), values);
    let bf16: Vec<u8> = values
        .iter()
        .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
        .collect();
    let back = convert("BF16", &bf16).unwrap();
    assert!(back
        .iter()
        .zip(&values)
        .all(|(b, v)| b.to_bits() == v.to_bits() & 0xFFFF_0000));
}
