use super::*;

/// A header block with the given fields and a valid checksum.
fn header(name: &[u8], flag: u8, size: u64, ustar: bool) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0001750\0");
    h[116..124].copy_from_slice(b"0001751\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14341234567\0");
    h[156] = flag;
    if ustar {
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
    }
    seal(&mut h);
    h
}

fn seal(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len() + padding(data.len() as u64) as usize, 0);
}

fn pax_record(k: &[u8], v: &[u8]) -> Vec<u8> {
    // The length counts its own digits.
    let body = k.len() + v.len() + 3;
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len += 1;
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(k);
    r.push(b'=');
    r.extend_from_slice(v);
    r.push(b'\n');
    r
}

type Entries = (Vec<(Entry, Vec<u8>)>, bool);

fn entries(bytes: &[u8]) -> io::Result<Entries> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while let Some(e) = r.next()? {
        let mut d = Vec::new();
        r.data().read_to_end(&mut d)?;
        out.push((e, d));
    }
    Ok((out, r.ended()))
}

/// A file capability (`cap_dac_override,cap_fowner+ep`) holds 0x0a, a newline.
const CAP: &[u8] =
    b"\x01\x00\x00\x02\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

#[test]
fn pax_values_may_hold_newlines_and_record_lookalikes() {
    let long = "d/".repeat(80) + "file";
    let mut pax = Vec::new();
    pax.extend(pax_record(b"SCHILY.xattr.security.capability", CAP));
    pax.extend(pax_record(
        b"SCHILY.xattr.user.tricky",
        b"a\n12 path=evil\n",
    ));
    // After the binary records: the crate lost these when an earlier record "failed".
    pax.extend(pax_record(b"path", long.as_bytes()));
    pax.extend(pax_record(b"uid", b"70000"));
    pax.extend(pax_record(b"mtime", b"1700000000.123456"));
    let mut t = Vec::new();
    t.extend(header(b"PaxHeaders/x", b'x', pax.len() as u64, true));
    push_data(&mut t, &pax);
    t.extend(header(b"short", b'0', 3, true));
    push_data(&mut t, b"abc");
    t.extend([0u8; 1024]);
    let (es, ended) = entries(&t).expect("read");
    assert!(ended);
    let [(e, data)] = es.as_slice() else {
        panic!("{es:?}")
    };
    assert_eq!(e.name, long.as_bytes());
    assert_eq!(
        (e.uid, e.gid, e.mtime, e.mtime_nsec, e.mode),
        (70000, 0o1751, 1_700_000_000, 123_456_000, 0o644)
    );
    assert_eq!(data, b"abc");
    assert_eq!(
        e.xattrs,
        vec![
            (b"security.capability".to_vec(), CAP.to_vec()),
            (b"user.tricky".to_vec(), b"a\n12 path=evil\n".to_vec()),
        ]
    );
}

#[test]
fn malformed_pax_records_are_errors() {
    for bad in [
        &b"9 a=b\n"[..], // length says 9, record is 6
        b"3 a=bcdefg\n", // too short for itself
        b"x a=b\n",      // no number
        b"+6 a=b\n",     // a sign is not a digit
        b"7 ab\n\n",     // no '='
        b"100 a=b\n",    // past the end
        b"6 a=bc",       // no newline at the end
    ] {
        assert!(
            pax_records(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        pax_records(b"6 a=b\n\0\0\0").expect("NUL padding"),
        vec![(b"a".to_vec(), b"b".to_vec())]
    );
}

#[test]
fn ustar_prefix_gnu_long_names_and_base256() {
    let mut t = Vec::new();
    let mut h = header(b"name", b'0', 0, true);
    h[345..351].copy_from_slice(b"prefix");
    seal(&mut h);
    t.extend(h);
    let long = b"l/".repeat(100);
    let mut name = long.clone();
    name.push(0);
    t.extend(header(b"././@LongLink", b'L', name.len() as u64, false));
    push_data(&mut t, &name);
    let mut h = header(b"cut", b'2', 0, false);
    h[157..163].copy_from_slice(b"target");
    // uid 2^32 in base-256; an mtime before 1970.
    h[108..116].copy_from_slice(&[0x80, 0, 0, 1, 0, 0, 0, 0]);
    h[136..148].copy_from_slice(&[0xff; 12]);
    seal(&mut h);
    t.extend(h);
    t.extend([0u8; 1024]);
    let (es, _) = entries(&t).expect("read");
    assert_eq!(es[0].0.name, b"prefix/name");
    assert_eq!(es[1].0.name, long);
    assert_eq!(es[1].0.kind, Kind::Symlink);
    assert_eq!(es[1].0.link, b"target");
    assert_eq!(es[1].0.uid, 1 << 32);
    assert_eq!(es[1].0.mtime, -1);
}

#[test]
fn truncation_and_missing_end_are_told_apart() {
    let mut t = Vec::new();
    t.extend(header(b"a", b'0', 700, true));
    push_data(&mut t, &[7u8; 700]);
    t.extend(header(b"b", b'0', 0, true));
    // Cut at an entry boundary: read whole, but no end-of-archive block.
    let (es, ended) = entries(&t).expect("boundary");
    assert_eq!(es.len(), 2);
    assert!(!ended);
    // Cut inside data or a header: an error.
    assert!(entries(&t[..512 + 300]).is_err());
    assert!(entries(&t[..512 + 1024 + 100]).is_err());
    // A corrupt header: a checksum error.
    let mut c = t.clone();
    c[10] ^= 1;
    let err = entries(&c).expect_err("checksum");
    assert!(err.to_string().contains("checksum"), "{err}");
    // A PAX header with no entry after it.
    let mut p = Vec::new();
    let rec = pax_record(b"path", b"x");
    p.extend(header(b"x", b'x', rec.len() as u64, true));
    push_data(&mut p, &rec);
    assert!(entries(&p).is_err());
}

#[test]
fn old_gnu_sparse_maps() {
    // 3 chunks: 2 in the header, one more in an extension block.
    let mut h = header(b"sp", b'S', 3 * 512, false);
    let put = |h: &mut [u8], at: usize, off: u64, len: u64| {
        h[at..at + 12].copy_from_slice(format!("{off:011o}\0").as_bytes());
        h[at + 12..at + 24].copy_from_slice(format!("{len:011o}\0").as_bytes());
    };
    put(&mut h, 386, 0, 512);
    put(&mut h, 410, 10_000, 512);
    h[482] = 1;
    h[483..495].copy_from_slice(format!("{:011o}\0", 1u64 << 30).as_bytes());
    seal(&mut h);
    let mut ext = [0u8; 512];
    put(&mut ext, 0, 20_480, 512);
    let mut t = Vec::new();
    t.extend(h);
    t.extend(ext);
    t.extend([1u8; 512]);
    t.extend([2u8; 512]);
    t.extend([3u8; 512]);
    t.extend([0u8; 1024]);
    let (es, _) = entries(&t).expect("read");
    let (e, data) = &es[0];
    assert_eq!(e.kind, Kind::Regular);
    assert_eq!(
        e.sparse,
        Some(Sparse {
            size: 1 << 30,
            chunks: vec![(0, 512), (10_000, 512), (20_480, 512)]
        })
    );
    assert_eq!(data.len(), 3 * 512);
}

#[test]
fn pax_sparse_1_0_maps_and_names() {
    let mut pax = Vec::new();
    pax.extend(pax_record(b"GNU.sparse.major", b"1"));
    pax.extend(pax_record(b"GNU.sparse.minor", b"0"));
    pax.extend(pax_record(b"GNU.sparse.name", b"dir/sparse1g"));
    pax.extend(pax_record(b"GNU.sparse.realsize", b"1073741824"));
    let mut data = b"2\n0\n5\n1073741819\n5\n".to_vec();
    data.resize(512, 0);
    data.extend(b"hellodone!");
    let mut t = Vec::new();
    t.extend(header(b"PaxHeaders/x", b'x', pax.len() as u64, true));
    push_data(&mut t, &pax);
    t.extend(header(
        b"dir/GNUSparseFile.1/sparse1g",
        b'0',
        data.len() as u64,
        true,
    ));
    push_data(&mut t, &data);
    t.extend([0u8; 1024]);
    let (es, _) = entries(&t).expect("read");
    let (e, d) = &es[0];
    assert_eq!(e.name, b"dir/sparse1g");
    assert_eq!(
        e.sparse,
        Some(Sparse {
            size: 1 << 30,
            chunks: vec![(0, 5), ((1 << 30) - 5, 5)]
        })
    );
    assert_eq!((e.size, d.as_slice()), (10, &b"hellodone!"[..]));
    // A map whose chunks do not add up to the data is refused.
    let mut bad = t.clone();
    let at = 512 + 512 + 512;
    bad[at..at + 2].copy_from_slice(b"1\n");
    assert!(entries(&bad).is_err());
}

/// Issue 12, real mtimes: a PAX `mtime` keeps its fraction as nanoseconds, counted forward
/// from the second below (a negative time as `struct timespec` holds it).
#[test]
fn pax_times_keep_their_nanoseconds() {
    let t = |v: &str| pax_time(v.as_bytes(), "mtime").ok();
    assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
    assert_eq!(t("1700000000.5"), Some((1_700_000_000, 500_000_000)));
    assert_eq!(
        t("1700000000.123456789"),
        Some((1_700_000_000, 123_456_789))
    );
    // Past nine digits the fraction is cut, not rounded.
    assert_eq!(t("7.0000000019"), Some((7, 1)));
    assert_eq!(t("1."), Some((1, 0)));
    assert_eq!(t("-1.25"), Some((-2, 750_000_000)));
    assert_eq!(t("-0.5"), Some((-1, 500_000_000)));
    assert_eq!(t("-3"), Some((-3, 0)));
    for bad in ["", ".5", "1.2.3", "1e9", "x", "1.-5", "+1", "1 "] {
        assert_eq!(t(bad), None, "{bad}");
    }
    // Beyond an i64 saturates (the importer bounds times to 1970..2446 anyway).
    assert_eq!(t("99999999999999999999.5"), Some((i64::MAX, 500_000_000)));
    assert_eq!(t("-99999999999999999999"), Some((i64::MIN, 0)));
    // A ustar header's octal mtime has no fraction.
    let mut tar = Vec::new();
    tar.extend(header(b"plain", b'0', 0, true));
    tar.extend([0u8; 1024]);
    let (es, _) = entries(&tar).expect("read");
    assert_eq!((es[0].0.mtime, es[0].0.mtime_nsec), (0o14341234567, 0));
}
