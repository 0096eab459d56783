//! The desktop repairs a table's scan decided, kept until the scan ends (they are fetched in its
//! snapshot, on its session, once its COPY is done) in one byte buffer: a table's initial sync may
//! bring each of a million mobile rows, and a million [`Repair`] values with their allocations took
//! about 200 bytes each (242 MB of peak RSS). Encoded, a repair is its key's bytes and a few more.

use bytes::Bytes;

use super::Repair;
use crate::capture::scan::Key;

/// Repairs in the order pushed.
#[derive(Debug, Default)]
pub struct Repairs {
    data: Vec<u8>,
    len: usize,
}

const BRING: u8 = 0;
const REMOVE: u8 = 1;

impl Repairs {
    pub fn push(&mut self, repair: Repair) {
        let out = &mut self.data;
        match repair {
            Repair::Bring {
                key,
                cloud_key,
                old,
            } => {
                out.push(BRING);
                put_len(out, key.0.len());
                for part in &key.0 {
                    put(out, part.as_deref());
                }
                put(out, cloud_key.as_deref().map(str::as_bytes));
                put(out, old.as_deref().map(str::as_bytes));
            }
            Repair::Remove { cloud_key, old } => {
                out.push(REMOVE);
                put(out, cloud_key.as_deref().map(str::as_bytes));
                put(out, Some(old.as_bytes()));
            }
        }
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.len = 0;
    }

    /// The repairs, decoded `n` at a time.
    pub fn chunks(&self, n: usize) -> impl Iterator<Item = Vec<Repair>> + '_ {
        let mut at = 0;
        let data = &self.data;
        std::iter::from_fn(move || {
            let mut chunk = Vec::new();
            while chunk.len() < n.max(1) && at < data.len() {
                chunk.push(decode(data, &mut at));
            }
            (!chunk.is_empty()).then_some(chunk)
        })
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

/// A length (with the top bit for NULL) and the bytes.
fn put(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        Some(v) => {
            put_len(out, v.len());
            out.extend_from_slice(v);
        }
    }
}

fn take_len(data: &[u8], at: &mut usize) -> u32 {
    let n = u32::from_le_bytes(data[*at..*at + 4].try_into().expect("four bytes"));
    *at += 4;
    n
}

fn take<'a>(data: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let n = take_len(data, at);
    if n == u32::MAX {
        return None;
    }
    let v = &data[*at..*at + n as usize];
    *at += n as usize;
    Some(v)
}

fn text(v: Option<&[u8]>) -> Option<String> {
    v.map(|v| String::from_utf8_lossy(v).into_owned())
}

fn decode(data: &[u8], at: &mut usize) -> Repair {
    let tag = data[*at];
    *at += 1;
    if tag == BRING {
        let parts = take_len(data, at) as usize;
        let key = (0..parts)
            .map(|_| take(data, at).map(Bytes::copy_from_slice))
            .collect();
        Repair::Bring {
            key: Key(key),
            cloud_key: text(take(data, at)),
            old: text(take(data, at)),
        }
    } else {
        Repair::Remove {
            cloud_key: text(take(data, at)),
            old: text(take(data, at)).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &Repair, b: &Repair) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn repairs_come_back_as_pushed_in_chunks() {
        let all = vec![
            Repair::Bring {
                key: Key(vec![Some(Bytes::from_static(b"7")), None]),
                cloud_key: None,
                old: Some("{\"a\": \"x\ty\"}".into()),
            },
            Repair::Remove {
                cloud_key: Some("12".into()),
                old: String::new(),
            },
            Repair::Bring {
                key: Key(vec![Some(Bytes::new())]),
                cloud_key: Some("ü".into()),
                old: None,
            },
            Repair::Remove {
                cloud_key: None,
                old: "{}".into(),
            },
            Repair::Bring {
                key: Key(Vec::new()),
                cloud_key: None,
                old: None,
            },
        ];
        let mut repairs = Repairs::default();
        for r in &all {
            repairs.push(r.clone());
        }
        assert_eq!(repairs.len(), all.len());
        let chunks: Vec<Vec<Repair>> = repairs.chunks(2).collect();
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        let back: Vec<Repair> = chunks.into_iter().flatten().collect();
        assert!(all.iter().zip(&back).all(|(a, b)| same(a, b)), "{back:?}");
        repairs.clear();
        assert!(repairs.is_empty());
        assert_eq!(repairs.chunks(3).count(), 0);
    }
}
