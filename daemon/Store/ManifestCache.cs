using System.Collections.Concurrent;

namespace DirBackup.Store;

/// <summary>
/// Parsed manifests of listed backups, kept while their backup directory's mtime stays the same. A manifest is
/// only ever replaced by a rename inside its backup directory, which changes that directory's mtime, so one
/// lstat per backup answers whether the cached manifest is still the one on disk. pvestatd and the GUI list
/// the same storage again and again; this turns those listings from reading every manifest into a stat each.
/// Cached manifests are shared: callers must not modify them.
/// </summary>
public static class ManifestCache
{
    private static readonly ConcurrentDictionary<string, GuestEntries> Guests = new(StringComparer.Ordinal);

    public sealed record CachedManifest(long DirectoryMTimeTicks, Manifest Manifest);

    public sealed class GuestEntries
    {
        public Dictionary<string, CachedManifest> Backups { get; init; } = new(StringComparer.Ordinal);
    }

    public static GuestEntries? Get(string guestDir) => Guests.GetValueOrDefault(guestDir);

    public static void Set(string guestDir, GuestEntries entries) => Guests[guestDir] = entries;

    public static void Forget(string guestDir) => Guests.TryRemove(guestDir, out _);

    /// <summary>
    /// This daemon's own manifest writes invalidate at once: a directory's mtime only moves with the kernel's
    /// coarse clock, so a write within a few milliseconds of the last listing may leave it unchanged.
    /// </summary>
    public static void Invalidate(string guestDir) => Forget(guestDir);
}
