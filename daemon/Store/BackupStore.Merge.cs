using DirBackup.Backup;
using DirBackup.Errors;
using DirBackup.Native;
using DirBackup.Qemu;
using DirBackup.Restore;

namespace DirBackup.Store;

/// <summary>A device image of a newer backup whose backing file is the image of the backup being deleted.</summary>
internal readonly record struct DependentImage(VolumeName Backup, ManifestDevice Device);

public sealed partial class BackupStore
{
    /// <summary>
    /// Deleting a backup that newer ones are layered on. Each of its images that a newer image is based on takes
    /// the newer image's changes (qemu-img commit, which costs the newer image's size, not the older one's), then
    /// replaces the newer image by one rename: the newer backup keeps its contents, its digests and its name, and
    /// is now based on what the deleted one was based on. The deleted backup is marked merging first: from then on
    /// its own images no longer hold its contents, so it is neither listed nor restored, while the newer chains
    /// stay whole at every step. A crash or failure part way is finished by the next delete of it, or by a prune.
    /// </summary>
    private async Task MergeIntoDependentsAsync(VolumeName volume, Manifest manifest, List<DependentImage> dependents,
        InUse.DeleteClaim claim, Func<string, Task>? log, CancellationToken cancellationToken)
    {
        claim.ExcludeRestoresOfGuest();
        var shared = dependents.GroupBy(d => d.Device.Name).FirstOrDefault(g => g.Count() > 1);
        if (shared is not null)
        {
            throw DirBackupException.Io($"cannot remove backup '{volume}': its image of '{shared.Key}' is the base of {string.Join(" and ", shared.Select(d => $"'{d.Backup}'"))}; it can be merged into one backup only");
        }
        if (HasStaging(volume.VmId))
        {
            throw new DirBackupException(ErrorCode.Busy, $"cannot remove backup '{volume}' now: a backup of guest {volume.VmId} is in progress and may read the images the merge changes; try again after it");
        }
        // Every chain is checked before anything changes; an image already moved by an interrupted merge has
        // nothing left to check, only its manifest to update.
        var pending = new List<(DependentImage Dependent, List<ChainLayer>? Layers)>();
        foreach (var dependent in dependents)
        {
            bool moved = manifest.Merging && AlreadyMoved(volume, manifest, dependent);
            pending.Add((dependent, moved ? null : CheckedChain(volume, dependent)));
        }
        if (!manifest.Merging)
        {
            manifest.Merging = true;
            WriteManifest(volume, manifest);
        }
        foreach (var (dependent, layers) in pending)
        {
            if (log is not null)
            {
                await log($"merging '{volume.VolId(config.StoreId)}' into '{dependent.Backup.VolId(config.StoreId)}' ({dependent.Device.Name})").ConfigureAwait(false);
            }
            if (layers is not null)
            {
                await MoveMergedImageAsync(volume, dependent, layers, cancellationToken).ConfigureAwait(false);
            }
            var newer = ReadManifest(dependent.Backup);
            newer.Devices.Single(d => d.Name == dependent.Device.Name).Parent = ParentOf(manifest, dependent.Device.Name);
            newer.Size = OwnFilesSize(BackupDir(dependent.Backup));
            WriteManifest(dependent.Backup, newer);
        }
    }

    private List<ChainLayer> CheckedChain(VolumeName volume, DependentImage dependent)
    {
        try
        {
            return ChainBuilder.Build(this, dependent.Backup, dependent.Device.Name);
        }
        catch (DirBackupException e) when (e.Code == ErrorCode.IoError)
        {
            throw DirBackupException.Io($"cannot remove backup '{volume}' by merging it into '{dependent.Backup}', which is based on it: {e.Message}");
        }
    }

    private async Task MoveMergedImageAsync(VolumeName volume, DependentImage dependent, List<ChainLayer> layers, CancellationToken cancellationToken)
    {
        var newerImage = Path.Combine(BackupDir(dependent.Backup), dependent.Device.File);
        var olderImage = Path.Combine(BackupDir(volume), dependent.Device.File);
        if (layers.Count < 2 || layers[^1].Path != newerImage || layers[^2].Path != olderImage)
        {
            throw DirBackupException.Io($"backup '{dependent.Backup}': the chain of '{dependent.Device.Name}' does not run through '{volume}'");
        }
        try
        {
            await QemuImg.CommitAsync(layers.Select(l => l.Path).ToList(), cancellationToken).ConfigureAwait(false);
            Libc.FsyncFile(olderImage);
            File.Move(olderImage, newerImage, overwrite: true);
            Libc.FsyncDirectory(BackupDir(dependent.Backup));
            Libc.FsyncDirectory(BackupDir(volume));
        }
        catch (Exception e) when (e is IOException or DirBackupException { Code: ErrorCode.IoError })
        {
            throw DirBackupException.Io($"merging '{volume}' into '{dependent.Backup}' failed ({e.Message}); '{dependent.Backup}' reads as before, '{volume}' is no longer listed, and 'pvesm free {volume.VolId(config.StoreId)}' or the next prune of guest {volume.VmId} finishes the merge");
        }
    }

    /// <summary>
    /// Whether an interrupted merge already renamed the merged image into the newer backup: the older image is gone
    /// and the newer one's header names the older one's parent. An older image missing for any other reason is lost.
    /// </summary>
    private bool AlreadyMoved(VolumeName volume, Manifest manifest, DependentImage dependent)
    {
        if (Libc.FileType(Path.Combine(BackupDir(volume), dependent.Device.File)) != -1)
        {
            return false;
        }
        var newerImage = Path.Combine(BackupDir(dependent.Backup), dependent.Device.File);
        var header = Qcow2Header.Read(newerImage);
        return header.BackingFile == VmDevice.BackingFileOf(ParentOf(manifest, dependent.Device.Name), dependent.Device.File);
    }

    private static string? ParentOf(Manifest manifest, string device) =>
        manifest.Devices.FirstOrDefault(d => d.Name == device)?.Parent;

    /// <summary>
    /// The committed images whose backing file is one of this backup's images. A dependent that is itself being
    /// merged away is finished first: its own merge has to run through this backup's images.
    /// </summary>
    private List<DependentImage> DependentImages(VolumeName volume)
    {
        var dependents = ListBackups(volume.VmId, includeMerging: true)
            .Where(b => b.Manifest.Devices.Any(d => d.Parent == volume.BackupDirName))
            .ToList();
        if (dependents.Where(b => b.Manifest.Merging).Select(b => (VolumeName?)b.Volume).FirstOrDefault() is VolumeName unfinished)
        {
            throw new DirBackupException(ErrorCode.HasDependents,
                $"cannot remove backup '{volume}': '{unfinished}', which is based on it, is still being merged away; free '{unfinished}' again to finish that first");
        }
        return dependents
            .SelectMany(b => b.Manifest.Devices.Where(d => d.Parent == volume.BackupDirName).Select(d => new DependentImage(b.Volume, d)))
            .ToList();
    }

    /// <summary>What a backup's manifest counts as its size: its own files, not its parents'.</summary>
    public static long OwnFilesSize(string backupDir) =>
        Directory.EnumerateFiles(backupDir)
            .Where(f => Path.GetFileName(f) is var name && name != Manifest.FileName && !name.StartsWith('.'))
            .Sum(f => new FileInfo(f).Length);
}
