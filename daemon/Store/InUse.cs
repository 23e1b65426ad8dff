using System.Collections.Concurrent;
using DirBackup.Errors;

namespace DirBackup.Store;

/// <summary>
/// Backups this daemon is reading for a restore, and guests whose chains it is merging. A backup in use cannot be
/// deleted until the restore's cleanup ends its use; a merge changes image files that restores of the same guest
/// may read, so the two exclude each other. Each side registers before it looks for the other, so of two that
/// start together at least one sees the other and backs off.
/// </summary>
public static class InUse
{
    private static readonly ConcurrentDictionary<(string Root, VolumeName Volume), int> Uses = new();
    private static readonly ConcurrentDictionary<(string Root, int VmId), int> Merges = new();

    public static void Acquire(string root, VolumeName volume)
    {
        Uses.AddOrUpdate((root, volume), 1, (_, n) => n + 1);
        if (Merges.ContainsKey((root, volume.VmId)))
        {
            Release(root, volume);
            throw new DirBackupException(ErrorCode.Busy,
                $"cannot restore '{volume}' now: a backup of guest {volume.VmId} is being merged into a newer one (a delete or prune is running); try again when it ends");
        }
    }

    public static void ReleaseAll(string root, VolumeName volume) => Uses.TryRemove((root, volume), out _);

    public static bool IsInUse(string root, VolumeName volume) => Uses.ContainsKey((root, volume));

    /// <summary>Claims a guest for a merge; refused while any backup of the guest is being restored.</summary>
    public static IDisposable BeginMerge(string root, VolumeName merged)
    {
        var key = (root, merged.VmId);
        Merges.AddOrUpdate(key, 1, (_, n) => n + 1);
        var reading = Uses.Keys.Where(k => k.Root == root && k.Volume.VmId == merged.VmId).Select(k => $"'{k.Volume}'").ToList();
        if (reading.Count > 0)
        {
            EndMerge(key);
            throw new DirBackupException(ErrorCode.Busy,
                $"cannot remove backup '{merged}': merging it into the backups based on it changes images that the restore of {string.Join(", ", reading)} reads; try again after the restore");
        }
        return new MergeClaim(key);
    }

    /// <summary>Gives back one <see cref="Acquire"/> whose use never started.</summary>
    public static void Release(string root, VolumeName volume) => Decrement(Uses, (root, volume));

    private static void EndMerge((string Root, int VmId) key) => Decrement(Merges, key);

    /// <summary>One holder fewer; the key goes with the last (unless another holder came back in between).</summary>
    private static void Decrement<TKey>(ConcurrentDictionary<TKey, int> holders, TKey key)
        where TKey : notnull
    {
        if (holders.AddOrUpdate(key, 0, (_, n) => n - 1) <= 0)
        {
            holders.TryRemove(new KeyValuePair<TKey, int>(key, 0));
        }
    }

    private sealed class MergeClaim((string Root, int VmId) key) : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                EndMerge(key);
            }
        }
    }
}
