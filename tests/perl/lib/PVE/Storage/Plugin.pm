package PVE::Storage::Plugin;

# Test stand-in for pve-storage's src/PVE/Storage/Plugin.pm, reduced to what a subclass inherits
# (signatures as in PVE-API.md section 2.4). Defaults that are no-ops in PVE are no-ops here; the
# path-based defaults of a directory storage cannot work for a backup-only storage and die, so a
# method the plugin forgot to override fails loudly. No SectionConfig: tests never register.

use strict;
use warnings;

my $PATH_BASED = "path-based default of PVE::Storage::Plugin reached\n";

# ---- config hooks ----------------------------------------------------------------------------

sub on_add_hook { my ($class, $storeid, $scfg, %sensitive) = @_; return undef; }
sub on_update_hook { my ($class, $storeid, $scfg, %sensitive) = @_; return undef; }
sub on_delete_hook { my ($class, $storeid, $scfg) = @_; return undef; }

# api() >= 13: PVE calls the _full variant, whose default bridges to the old hook
sub on_update_hook_full {
    my ($class, $storeid, $scfg, $update, $delete, $sensitive) = @_;
    return $class->on_update_hook($storeid, $update, %{ $sensitive // {} });
}

# ---- storage -------------------------------------------------------------------------------

sub check_connection { my ($class, $storeid, $scfg) = @_; return 1; }
sub activate_storage { my ($class, $storeid, $scfg, $cache) = @_; die $PATH_BASED; }
sub deactivate_storage { my ($class, $storeid, $scfg, $cache) = @_; return undef; }
sub status { my ($class, $storeid, $scfg, $cache) = @_; die $PATH_BASED; }

sub new_backup_provider {
    my ($class, $scfg, $storeid, $log_function) = @_;
    die "implement me if enabling the feature 'backup-provider' in plugindata()->{features}\n";
}

# ---- volumes -------------------------------------------------------------------------------

sub parse_volname { my ($class, $volname) = @_; die "unable to parse directory volume name '$volname'\n"; }
sub path { my ($class, $scfg, $volname, $storeid, $snapname) = @_; die $PATH_BASED; }
sub filesystem_path { my ($class, $scfg, $volname, $snapname) = @_; die $PATH_BASED; }
sub list_images { my ($class, $storeid, $scfg, $vmid, $vollist, $cache) = @_; die $PATH_BASED; }
sub list_volumes { my ($class, $storeid, $scfg, $vmid, $content_types) = @_; die $PATH_BASED; }
sub volume_size_info { my ($class, $scfg, $storeid, $volname, $timeout) = @_; die $PATH_BASED; }

sub get_volume_attribute {
    my ($class, $scfg, $storeid, $volname, $attribute) = @_;
    die $PATH_BASED;
}

sub update_volume_attribute {
    my ($class, $scfg, $storeid, $volname, $attribute, $value) = @_;
    die $PATH_BASED;
}

sub free_image { my ($class, $storeid, $scfg, $volname, $isBase, $format) = @_; die $PATH_BASED; }

sub prune_backups {
    my ($class, $scfg, $storeid, $keep, $vmid, $type, $dryrun, $logfunc) = @_;
    die $PATH_BASED;
}

sub activate_volume { my ($class, $storeid, $scfg, $volname, $snapname, $cache, $hints) = @_; die $PATH_BASED; }
sub deactivate_volume { my ($class, $storeid, $scfg, $volname, $snapname, $cache) = @_; return 1; }
sub map_volume { my ($class, $storeid, $scfg, $volname, $snapname) = @_; return $class->path($scfg, $volname, $storeid, $snapname); }
sub unmap_volume { my ($class, $storeid, $scfg, $volname, $snapname) = @_; return 1; }

sub alloc_image { my ($class, $storeid, $scfg, $vmid, $fmt, $name, $size) = @_; die $PATH_BASED; }
sub clone_image { my ($class, $scfg, $storeid, $volname, $vmid, $snap) = @_; die $PATH_BASED; }
sub create_base { my ($class, $storeid, $scfg, $volname) = @_; die $PATH_BASED; }
sub volume_resize { my ($class, $scfg, $storeid, $volname, $size, $running) = @_; die $PATH_BASED; }
sub volume_snapshot { my ($class, $scfg, $storeid, $volname, $snap) = @_; die $PATH_BASED; }
sub volume_snapshot_rollback { my ($class, $scfg, $storeid, $volname, $snap) = @_; die $PATH_BASED; }
sub volume_snapshot_delete { my ($class, $scfg, $storeid, $volname, $snap, $running) = @_; die $PATH_BASED; }

sub rename_volume {
    my ($class, $scfg, $storeid, $source_volname, $target_vmid, $target_volname) = @_;
    die "not implemented in storage plugin '$class'\n";
}

sub rename_snapshot {
    my ($class, $scfg, $storeid, $volname, $source_snap, $target_snap) = @_;
    die "rename_snapshot is not implemented for $class";
}

sub volume_export {
    my ($class, $scfg, $storeid, $fh, $volname, $format, $snapshot, $base_snapshot, $with_snapshots) = @_;
    die $PATH_BASED;
}

sub volume_import {
    my ($class, $scfg, $storeid, $fh, $volname, $format, $snapshot, $base_snapshot, $with_snapshots,
        $allow_rename) = @_;
    die $PATH_BASED;
}

sub volume_export_formats { my ($class, $scfg, $storeid, $volname, @rest) = @_; return (); }
sub volume_import_formats { my ($class, $scfg, $storeid, $volname, @rest) = @_; return (); }

sub volume_has_feature {
    my ($class, $scfg, $feature, $storeid, $volname, $snapname, $running, $opts) = @_;
    return undef;
}

# ---- optional APIs a backup storage leaves to the base (catalogue "inherited") ------------------

sub get_identity { my ($class, $scfg, $storeid) = @_; die "implement me in sub-class\n"; }

sub qemu_blockdev_options {
    my ($class, $scfg, $storeid, $volname, $machine_version, $options) = @_;
    die "cannot use volume '$volname' of a backup storage as a disk\n";
}

sub volume_rollback_is_possible { my ($class, $scfg, $storeid, $volname, $snap, $blockers) = @_; return 1; }
sub volume_snapshot_info { my ($class, $scfg, $storeid, $volname) = @_; die $PATH_BASED; }
sub volume_snapshot_needs_fsfreeze { return 0; }
sub storage_can_replicate { my ($class, $scfg, $storeid, $format) = @_; return 0; }

1;
