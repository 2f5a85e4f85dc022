//! Layer tars built by tests, hostile ones included.

/// One tar entry as a test writes it: names are copied raw into the
/// header, so hostile paths (`..`, absolute) get through as an attacker's
/// tool would write them.
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Owned(&'a str, &'a [u8], u32, u64, u64),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
    Xattr(&'a str, &'a str, &'a [u8]),
}

fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    let n = name.as_bytes();
    h.as_old_mut().name[..n.len()].copy_from_slice(n);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn link_header(name: &str, target: &str, kind: tar::EntryType) -> tar::Header {
    let mut h = header(name, kind, 0o777, 0);
    let t = target.as_bytes();
    h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
    h
}

pub fn layer(entries: &[E]) -> Vec<u8> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (mut h, data): (tar::Header, &[u8]) = match e {
            E::Dir(n, m) => (header(n, T::Directory, *m, 0), b""),
            E::File(n, d, m) => (header(n, T::Regular, *m, d.len() as u64), d),
            E::Owned(n, d, m, u, g) => {
                let mut h = header(n, T::Regular, *m, d.len() as u64);
                h.set_uid(*u);
                h.set_gid(*g);
                (h, d)
            }
            E::Link(n, t) => (link_header(n, t, T::Symlink), b""),
            E::Hard(n, t) => (link_header(n, t, T::Link), b""),
            E::Char(n, ma, mi) => {
                let mut h = header(n, T::Char, 0o666, 0);
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
                (h, b"")
            }
            E::Fifo(n) => (header(n, T::Fifo, 0o640, 0), b""),
            E::Xattr(n, key, value) => {
                let k = format!("SCHILY.xattr.{key}");
                b.append_pax_extensions([(k.as_str(), *value)]).unwrap();
                (header(n, T::Regular, 0o644, 1), b"x")
            }
        };
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}
