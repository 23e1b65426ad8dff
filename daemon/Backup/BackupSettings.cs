namespace DirBackup.Backup;

public sealed record BackupSettings
{
    /// <summary>Where private sockets of qemu-storage-daemon children live (root only, like the daemon's own socket).</summary>
    public string RuntimeDir { get; init; } = "/run/dirbackupd";

    /// <summary>Reader and writer threads per disk, each with its own NBD connections and a batch of requests in flight.</summary>
    public int CopyWorkers { get; init; } = 4;

    /// <summary>Progress lines in the task log come no more often than this.</summary>
    public TimeSpan ProgressInterval { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>The largest vzdump log file kept with a backup.</summary>
    public long MaxLogFileBytes { get; init; } = 64L << 20;
}
